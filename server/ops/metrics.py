"""Prometheus metrics of the shim, in a registry of the app's own (no import-time globals)."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest, multiprocess

# Reranking calls on a GPU take milliseconds: buckets must resolve well below 300 ms.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                   0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("reranker_request", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.duration = Histogram("reranker_request_duration_seconds", "HTTP request latency",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        # Gauge modes only matter with several workers (prometheus multiprocess mode).
        self.inflight = Gauge("reranker_inflight_requests", "HTTP requests being served",
                              registry=r, multiprocess_mode="livesum")
        self.inflight_pairs = Gauge("reranker_inflight_pairs", "(query, document) pairs admitted",
                                    registry=r, multiprocess_mode="livesum")
        self.documents = Counter("reranker_documents", "Documents scored", registry=r)
        self.tokens = Counter("reranker_prompt_tokens", "Prompt tokens sent to the engine", registry=r)
        self.rejections = Counter("reranker_admission_rejections", "Requests refused by admission "
                                  "control or rate limits", ["reason"], registry=r)
        self.ratelimit_store_errors = Counter(
            "reranker_ratelimit_store_errors", "Shared rate-limit store calls that failed or timed "
            "out (each one served with per-process limits instead)", registry=r)
        self.cache_hits = Counter("reranker_score_cache_hits", "Score cache hits", registry=r)
        self.cache_misses = Counter("reranker_score_cache_misses", "Score cache misses", registry=r)
        self.engine_up = Gauge("reranker_engine_up", "1 when vLLM answers /health", registry=r,
                               multiprocess_mode="livemax")
        self.draining = Gauge("reranker_draining", "1 while the shim drains", registry=r,
                              multiprocess_mode="livemax")
        self.gpu_memory = _gpu_memory_gauge(r)

    def render(self) -> tuple[bytes, str]:
        if self.gpu_memory is not None:
            self.gpu_memory.refresh()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: merge their files
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _GpuMemory:
    """gpu_memory_used_bytes{gpu} from NVML, refreshed at scrape time."""

    def __init__(self, pynvml, registry) -> None:
        self.nvml = pynvml
        self.gauge = Gauge("gpu_memory_used_bytes", "GPU memory in use (NVML)", ["gpu"],
                           registry=registry, multiprocess_mode="livemax")

    def refresh(self) -> None:
        try:
            for i in range(self.nvml.nvmlDeviceGetCount()):
                handle = self.nvml.nvmlDeviceGetHandleByIndex(i)
                self.gauge.labels(gpu=str(i)).set(self.nvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:  # a driver hiccup must not break /metrics
            pass


def _gpu_memory_gauge(registry):
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
    except Exception:  # no NVML library or no GPU visible: the metric is simply absent
        return None
    return _GpuMemory(pynvml, registry)
