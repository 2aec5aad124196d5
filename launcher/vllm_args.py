"""Settings -> vLLM argv. The only place that knows vLLM's flags."""

from __future__ import annotations

import json
import sys
from pathlib import Path

TEMPLATE = Path(__file__).parent / "templates" / "qwen3_reranker.jinja"
# Tokens per engine step on GPUs: rag throughput +19-22% and p95 189 -> 153 ms over vLLM's
# 8192 on an H200 (benchmarks/RESULTS.md). A reranker only prefills, so bigger steps pay.
GPU_BATCHED_TOKENS = 32768
CPU_KVCACHE_GIB = "2"  # ~18k tokens of Qwen3-Reranker-0.6B KV cache
# vLLM's idle keep-alive (VLLM_HTTP_TIMEOUT_KEEP_ALIVE, read by vLLM 0.26 and 0.32 alike): well
# above the shim's pool expiry, server/scoring/engine.py KEEPALIVE_EXPIRY_S.
VLLM_KEEP_ALIVE_S = 30

# Turns an original Qwen3-Reranker (a causal LM) into a one-logit classifier whose weight row
# is W[yes] - W[no], so sigmoid(logit) = softmax over (no, yes) = P(yes).
QWEN3_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}


def read_architectures(model: str) -> list[str]:
    """Architectures from the checkpoint's config.json (local dir or Hub); a missing path, an
    unreachable hub or a checkpoint that is not a Qwen3 reranker raises preflight.ConfigError
    with one line that says what to do."""
    from launcher.preflight import check_qwen3_reranker, model_config

    return check_qwen3_reranker(model, model_config(model))


def needs_qwen3_overrides(settings, architectures: list[str] | None = None) -> bool:
    """Original checkpoints declare Qwen3ForCausalLM and need the overrides; converted seq-cls
    checkpoints already carry a score head and must not get them."""
    if settings.qwen3_overrides != "auto":
        return settings.qwen3_overrides == "on"
    if architectures is None:
        architectures = read_architectures(settings.model_path)
    return "Qwen3ForCausalLM" in architectures


def gpu_visible() -> bool:
    return Path("/dev/nvidiactl").exists()


def vllm_environment(base: dict[str, str], gpu: bool | None = None,
                     tensor_parallel_size: int = 1) -> dict[str, str]:
    """One persistent volume at VLLM_CACHE_ROOT should hold every compile cache, so a restart
    reuses torch.compile (inductor) and Triton artefacts too, not only vLLM's own.

    On the CPU build, vLLM otherwise sizes its KV cache as a share (0.92) of all memory and
    refuses to start when other processes hold some of it; a fixed space starts anywhere. It also
    runs the model in a third process (a worker under the engine core) even for one device;
    running it inside the engine core saves that interpreter's start-up (7-10 s of 28-33 s here)
    and scored as fast or faster (benchmarks/RESULTS.md). GPU vLLM already does so for one GPU."""
    env = dict(base)
    # vLLM's uvicorn closes idle connections after 5 s by default; the shim's pool forgets them
    # after KEEPALIVE_EXPIRY_S (3 s). A server must outlive its client's idle expiry by a wide
    # margin, or a request goes out on a connection vLLM is closing (facts.md: 1 in 3,000-6,000).
    env.setdefault("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", str(VLLM_KEEP_ALIVE_S))
    if not (gpu_visible() if gpu is None else gpu):
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
        if tensor_parallel_size == 1:
            env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    root = env.get("VLLM_CACHE_ROOT")
    if root:
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", f"{root}/inductor")
        env.setdefault("TRITON_CACHE_DIR", f"{root}/triton")
    return env


def build_vllm_command(settings, architectures: list[str] | None = None,
                       python: str = sys.executable, gpu: bool | None = None) -> list[str]:
    s = settings
    gpu = gpu_visible() if gpu is None else gpu
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server",
           "--model", s.model_path,
           "--served-model-name", s.model_name,
           "--host", s.vllm_host, "--port", str(s.vllm_port),
           "--runner", "pooling", "--convert", "classify",
           "--chat-template", str(TEMPLATE),
           "--max-model-len", str(s.max_model_len),
           "--dtype", s.dtype,
           "--tensor-parallel-size", str(s.tensor_parallel_size),
           "--shutdown-timeout", str(s.vllm_shutdown_timeout)]
    if needs_qwen3_overrides(s, architectures):
        cmd += ["--hf-overrides", json.dumps(QWEN3_OVERRIDES, separators=(",", ":"))]
    optional = {
        "--gpu-memory-utilization": s.gpu_memory_utilization,
        "--max-num-seqs": s.max_num_seqs,
        "--max-num-batched-tokens": s.max_num_batched_tokens or (GPU_BATCHED_TOKENS if gpu else None),
    }
    for flag, value in optional.items():
        if value is not None:
            cmd += [flag, str(value)]
    cmd.append("--enable-prefix-caching" if s.enable_prefix_caching else "--no-enable-prefix-caching")
    if s.enforce_eager:
        cmd.append("--enforce-eager")
    return cmd + list(s.extra_vllm_args)
