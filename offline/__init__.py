"""Offline work against the reranking service: bulk scoring jobs (`reranker batch`) and relevance
evaluation of a first-stage run before and after reranking (`reranker eval`)."""
