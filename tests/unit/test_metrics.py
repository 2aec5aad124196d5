"""Shim metrics that need no engine."""

import sys
import types

from server.ops.metrics import LATENCY_BUCKETS, Metrics


def test_latency_buckets_resolve_below_300ms():
    assert len([b for b in LATENCY_BUCKETS if b < 0.3]) >= 8


def test_gpu_memory_metric_from_nvml_fake_because_ci_has_no_gpu(monkeypatch):
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=(h + 1) * 1_000_000),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=15 + 60 * h, memory=3),
        nvmlDeviceGetPowerUsage=lambda h: 180_000 + h * 500_000,  # milliwatts
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    text = Metrics().render()[0].decode()
    assert 'gpu_memory_used_bytes{gpu="0"} 1e+06' in text
    assert 'gpu_memory_used_bytes{gpu="1"} 2e+06' in text
    assert 'gpu_utilization_ratio{gpu="0"} 0.15' in text
    assert 'gpu_utilization_ratio{gpu="1"} 0.75' in text
    assert 'gpu_power_watts{gpu="1"} 680.0' in text


def test_no_gpu_metric_without_nvml(monkeypatch):
    """On a CPU host the GPU gauges are absent (not zero, not an error): /metrics still renders."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as on a CPU-only host
    text = Metrics().render()[0].decode()
    assert "reranker_" in text
    for name in ("gpu_memory_used_bytes", "gpu_utilization_ratio", "gpu_power_watts"):
        assert name not in text


def test_saturation_gauge_and_its_integral_follow_in_flight_tokens():
    """reranker_engine_saturation is in-flight tokens / capacity; its counter integrates it over time,
    including while a long request is still running (the watcher flushes once a second)."""
    import asyncio
    import time

    from server.ops.admission import Admission

    metrics = Metrics()
    admission = Admission(max_pairs=100, max_tokens=0, retry_after=1, metrics=metrics, capacity_tokens=1000)

    def value(name):
        return metrics.registry.get_sample_value(name)

    async def scenario():
        started = time.monotonic()
        async with admission.admit(2, 500), admission.admit(1, 250):
            assert value("reranker_engine_saturation") == 0.75
            await asyncio.sleep(0.2)
            admission.flush()  # what the engine watcher does while the requests run
            running = value("reranker_engine_saturation_seconds_total")
            assert 0.75 * 0.2 <= running <= 0.75 * (time.monotonic() - started)
        assert value("reranker_engine_saturation") == 0.0
        done = value("reranker_engine_saturation_seconds_total")
        await asyncio.sleep(0.1)
        admission.flush()
        assert value("reranker_engine_saturation_seconds_total") == done, "idle adds nothing"

    asyncio.run(scenario())


def test_series_for_every_queue_class_and_rejection_reason_exist_from_the_start():
    text = Metrics().render()[0].decode()
    for line in ('reranker_queue_depth{class="interactive"} 0.0', 'reranker_queue_depth{class="bulk"} 0.0',
                 'reranker_queue_wait_seconds_count{class="interactive"} 0.0',
                 'reranker_admission_rejections_total{reason="pairs"} 0.0',
                 'reranker_admission_rejections_total{reason="rate_limit"} 0.0',
                 "reranker_engine_verified 0.0"):
        assert line in text, line
