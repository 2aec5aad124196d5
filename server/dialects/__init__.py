"""The dialect registry: every API dialect the shim speaks, each one module (or package).

Adding a dialect = one module that defines `DIALECT = Dialect(...)` (schema, mapping, error
shape) + one entry below. The app, the middleware (metrics, access log), the error handler, the
contract tests and the load generator all read this tuple.
"""

from server.dialects import cohere, hf, legacy_rank, mixedbread, nim, pinecone, tei, vllm, weaviate

DIALECTS = (legacy_rank.DIALECT, cohere.DIALECT, tei.DIALECT, vllm.DIALECT, nim.DIALECT, hf.DIALECT,
            weaviate.DIALECT, mixedbread.DIALECT, pinecone.DIALECT)
