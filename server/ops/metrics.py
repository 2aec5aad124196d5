"""Prometheus metrics of the shim, in a registry of the app's own (no import-time globals)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Reranking calls on a GPU take milliseconds: buckets must resolve well below 300 ms.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                   0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_CLASSES = ("interactive", "bulk")
# Known reasons of reranker_admission_rejections_total, exported at 0 from the start so rate()
# and alert ratios have a series before the first refusal.
REJECTION_REASONS = ("pairs", "tokens", "image_bytes", "rate_limit")


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
        self.engine_outstanding_tokens = Gauge(
            "reranker_engine_outstanding_tokens", "Prompt tokens sent to the engine and not answered",
            registry=r, multiprocess_mode="livesum")
        self.batch_prompts = Histogram("reranker_engine_batch_prompts", "Prompts per /classify call",
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                                       registry=r)
        self.engine_up = Gauge("reranker_engine_up", "1 when vLLM answers /health", registry=r,
                               multiprocess_mode="livemax")
        self.draining = Gauge("reranker_draining", "1 while the shim drains", registry=r,
                              multiprocess_mode="livemax")
        # --- readiness canary, saturation, priority queues (dashboard, alerts, autoscaling) -----
        # All three state gauges are set every second by each worker's engine watcher
        # (server/ops/health.py publish_state), so no worker's file goes stale between scrapes.
        self.engine_verified = Gauge("reranker_engine_verified", "1 when the readiness canary "
                                     "passed: the engine scores two unrelated documents "
                                     "differently", registry=r, multiprocess_mode="livemin")
        # Saturation = prompt tokens in flight to the engine / saturation_capacity_tokens (the
        # pod's share; the workers' values add up). The gauge is the value now; the counter is
        # its integral over time, so rate(reranker_engine_saturation_seconds_total[w]) is the
        # exact mean over w, whatever the scrape interval (what the HPA scales on).
        self.saturation = Gauge("reranker_engine_saturation", "In-flight engine prompt tokens / "
                                "saturation_capacity_tokens (1 = the engine is full)",
                                registry=r, multiprocess_mode="livesum")
        self.saturation_seconds = Counter("reranker_engine_saturation_seconds", "Integral of "
                                          "reranker_engine_saturation over time; rate() = mean "
                                          "saturation", registry=r)
        # --- per engine (label engine: its index; server/scoring/engines.py) ----------------
        # The unlabelled engine gauges above are the pod's: up / verified = some engine is.
        self.engine_instance_up = Gauge("reranker_engine_instance_up", "1 when this engine "
                                        "answers /health", ["engine"], registry=r,
                                        multiprocess_mode="livemax")
        self.engine_instance_verified = Gauge("reranker_engine_instance_verified", "1 when this "
                                              "engine passed the readiness canary since it last "
                                              "came up", ["engine"], registry=r,
                                              multiprocess_mode="livemin")
        self.engine_instance_outstanding = Gauge(
            "reranker_engine_instance_outstanding_tokens", "Prompt tokens sent to this engine and "
            "not answered", ["engine"], registry=r, multiprocess_mode="livesum")
        self.engine_instance_inflight = Gauge("reranker_engine_instance_inflight_calls", "Calls "
                                              "in flight to this engine", ["engine"], registry=r,
                                              multiprocess_mode="livesum")
        self.engine_instance_calls = Counter("reranker_engine_instance_calls", "Calls sent to "
                                             "this engine", ["engine"], registry=r)
        self.engine_failovers = Counter("reranker_engine_failovers", "Calls that failed on this "
                                        "engine (down, disconnected) and were sent to another",
                                        ["engine"], registry=r)
        # Priority dispatch (server/scoring/dispatch.py) sets these. Every class exists from the
        # start (zeros, not absent series), so dashboards and alerts find them.
        self.queue_depth = Gauge("reranker_queue_depth", "Prompts waiting in the shim's dispatch queue",
                                 ["class"], registry=r, multiprocess_mode="livesum")
        self.queue_wait = Histogram("reranker_queue_wait_seconds", "Time waited before dispatch "
                                    "to the engine", ["class"], buckets=LATENCY_BUCKETS, registry=r)
        for name in QUEUE_CLASSES:
            self.queue_depth.labels(name)
            self.queue_wait.labels(name)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason=reason)
        self.gpu_memory = _gpu_memory_gauge(r)

    def render(self) -> tuple[bytes, str]:
        if self.gpu_memory is not None:
            self.gpu_memory.refresh()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: merge their files
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _GpuStats:
    """Per GPU, from NVML at scrape time: memory in use, how busy it is (the share of the last
    sample period in which a kernel ran: an idle GPU beside a saturated engine core shows here)
    and power draw."""

    def __init__(self, pynvml, registry) -> None:
        self.nvml = pynvml
        self.memory = Gauge("gpu_memory_used_bytes", "GPU memory in use (NVML)", ["gpu"],
                            registry=registry, multiprocess_mode="livemax")
        self.busy = Gauge("gpu_utilization_ratio", "Share of time a kernel was running on the GPU "
                          "over NVML's last sample period (0-1)", ["gpu"], registry=registry,
                          multiprocess_mode="livemax")
        self.power = Gauge("gpu_power_watts", "GPU power draw (NVML)", ["gpu"], registry=registry,
                           multiprocess_mode="livemax")

    def refresh(self) -> None:
        try:
            for i in range(self.nvml.nvmlDeviceGetCount()):
                handle = self.nvml.nvmlDeviceGetHandleByIndex(i)
                gpu = str(i)
                self.memory.labels(gpu=gpu).set(self.nvml.nvmlDeviceGetMemoryInfo(handle).used)
                self.busy.labels(gpu=gpu).set(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
                self.power.labels(gpu=gpu).set(self.nvml.nvmlDeviceGetPowerUsage(handle) / 1000)
        except Exception:  # a driver hiccup (or a reading this GPU lacks) must not break /metrics
            pass


def _gpu_memory_gauge(registry):
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
    except Exception:  # no NVML library or no GPU visible: the metric is simply absent
        return None
    return _GpuStats(pynvml, registry)
