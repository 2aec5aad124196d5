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
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    text = Metrics().render()[0].decode()
    assert 'gpu_memory_used_bytes{gpu="0"} 1e+06' in text
    assert 'gpu_memory_used_bytes{gpu="1"} 2e+06' in text


def test_no_gpu_metric_without_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as on a CPU-only host
    assert "gpu_memory_used_bytes" not in Metrics().render()[0].decode()
