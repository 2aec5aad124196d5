"""GPU facts the launcher needs, in one place: which GPUs this process may use, how much memory
one has, the KV cache an engine sharing a GPU gets, how many engines share a GPU when the
operator left that to the launcher, and the commands of an MPS control daemon.

Nothing here initialises CUDA: the launcher only reads NVML (or asks nvidia-smi), so vLLM's engine
core can still be forked from a process that never touched the GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

GIB = 1 << 30
# Memory an engine needs beyond weights and KV cache: activations of one engine step (32k
# tokens), CUDA graphs, the CUDA context and allocator slack. Generous for the 0.6B-8B shapes.
ENGINE_RESERVE_BYTES = 6 * GIB
# KV cache of an engine sharing a GPU, in engine steps of tokens: a reranker only prefills and
# frees a request's blocks when its step ends, so a few steps cover the tokens in flight, a long
# document prefilled in chunks, and the shared query prefix the prefix cache keeps.
KV_STEPS = 4
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "auto": 2}


def gpu_visible() -> bool:
    return Path("/dev/nvidiactl").exists()


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries: that variable's list when
    set, else one index per /dev/nvidiaN device node (what a container was given)."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    nodes = [p for p in Path("/dev").glob("nvidia[0-9]*") if p.name[len("nvidia"):].isdigit()]
    return [str(i) for i in range(len(nodes))]


def gpus_needed(settings) -> int:
    return -(-settings.engines // settings.engines_per_gpu) * settings.tensor_parallel_size


def total_memory_bytes(index: int = 0) -> int | None:
    """Total memory of visible GPU `index` (NVML, else nvidia-smi), or None where neither answers."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).total)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML binding or library: ask the tool instead
        pass
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                              "-i", str(index)], capture_output=True, text=True, timeout=20).stdout
        return int(float(out.split()[0])) * (1 << 20)  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class ModelShape:
    """What memory sizing needs from a checkpoint's config.json."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(layers=int(config["num_hidden_layers"]), hidden=hidden,
                   intermediate=int(config["intermediate_size"]), heads=heads,
                   kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or hidden // heads),
                   vocab=int(config.get("vocab_size", 151669)),
                   tied=bool(config.get("tie_word_embeddings", True)))

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes  # K and V

    @classmethod
    def of_checkpoint(cls, config: dict) -> ModelShape:
        """The language model's shape, also where a Qwen3-VL config nests it in text_config."""
        return cls.from_config(config.get("text_config") or config)

    def weight_bytes(self, dtype_bytes: int) -> int:
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return (self.layers * (attention + mlp) + embeddings) * dtype_bytes


class SharedGpuTooSmall(ValueError):
    """Engines sharing a GPU would not fit it (a start-up error, one line)."""


def shared_engine_kv_bytes(shape: ModelShape, *, total_bytes: int, utilization: float, engines: int,
                           step_tokens: int, max_model_len: int, dtype_bytes: int = 2) -> int:
    """The fixed KV cache of each of `engines` engines on one GPU.

    vLLM sizes a KV cache from the free memory it measures while profiling, and its persisted
    start-up plan (VLLM_ENABLE_STARTUP_PLAN) does not include gpu_memory_utilization in its key, so
    a plan recorded by one engine alone would give the first of several engines the whole GPU. A
    fixed size per engine avoids both: KV_STEPS engine steps of tokens, cut to what the engine's
    share of the GPU leaves after weights and ENGINE_RESERVE_BYTES. The engines then also start
    together instead of one after another."""
    per_token = shape.kv_bytes_per_token(dtype_bytes)
    share = int(total_bytes * utilization / engines)
    room = share - shape.weight_bytes(dtype_bytes) - ENGINE_RESERVE_BYTES
    wanted = KV_STEPS * max(step_tokens, max_model_len) * per_token
    least = max(step_tokens, max_model_len) * per_token  # one full step must fit
    if room < least:
        raise SharedGpuTooSmall(
            f"{engines} engines do not fit one GPU of {total_bytes / GIB:.0f} GiB at "
            f"gpu_memory_utilization {utilization}: each needs at least "
            f"{(least + shape.weight_bytes(dtype_bytes) + ENGINE_RESERVE_BYTES) / GIB:.1f} GiB; "
            f"lower --engines-per-gpu or raise --gpu-memory-utilization")
    return min(wanted, room)


# --- engines per GPU when the operator left it to the launcher -----------------------------------
# A small model's requests are bound by vLLM's one engine-core process per engine (one CPU core
# busy while the GPU idles), so on a large GPU several engines under MPS serve more of them
# (benchmarks/RESULTS.md, "Engines per GPU as the default"). The rule covers only what was
# measured: models up to FILL_MAX_PARAMS on one GPU of at least FILL_MIN_GPU_BYTES, with enough
# CPUs for four engine cores and their API servers. Larger models already keep the GPU busy.
FILL_ENGINES = 4
FILL_MAX_PARAMS = 2_000_000_000
FILL_MIN_GPU_BYTES = 70 * GIB
FILL_MIN_CPUS = 12


@dataclass(frozen=True)
class FillChoice:
    """How many engines share the GPU, whether under the launcher's MPS daemon, and why."""

    engines_per_gpu: int
    mps: bool
    reason: str


def available_cpus() -> int:
    """CPUs this process may run on (its affinity set: what a container's cpuset gives it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_engines_per_gpu(*, params: int | None, vl: bool, gpus: int, gpu_bytes: int | None,
                           cpus: int, node_mps: bool, mps_problem: Callable[[], str | None]) -> FillChoice:
    """The automatic engines-per-GPU choice for a single-GPU, single-engine configuration.

    `mps_problem()` says why the launcher's MPS daemon cannot run here (None when it can); it is
    asked last, only when everything else allows several engines (it starts and stops the real
    daemon). Without MPS, engines sharing a GPU time-slice it and lose bulk throughput, so the
    choice is then one engine. `node_mps`: the node already shares the GPU through MPS (the pod is
    one of several clients): one engine."""
    def one(reason: str) -> FillChoice:
        return FillChoice(1, False, reason)

    if gpus != 1:
        return one(f"{gpus} GPUs visible (measured on one)")
    if vl:
        return one("a Qwen3-VL reranker (bound by image processing, not measured with several engines)")
    if params is None or params > FILL_MAX_PARAMS:
        size = "unknown" if params is None else f"{params / 1e9:.1f}B"
        return one(f"model size {size} parameters (above {FILL_MAX_PARAMS / 1e9:.0f}B one engine keeps the GPU busy)")
    if gpu_bytes is None or gpu_bytes < FILL_MIN_GPU_BYTES:
        size = "unknown" if gpu_bytes is None else f"{gpu_bytes / GIB:.0f} GiB"
        return one(f"GPU memory {size} (below {FILL_MIN_GPU_BYTES / GIB:.0f} GiB)")
    if cpus < FILL_MIN_CPUS:
        return one(f"{cpus} CPUs (below {FILL_MIN_CPUS})")
    if node_mps:
        return one("the node provides MPS (CUDA_MPS_PIPE_DIRECTORY is set): the GPU is shared with other pods")
    problem = mps_problem()
    if problem:
        return one(f"no MPS daemon: {problem}")
    return FillChoice(FILL_ENGINES, True, f"model {params / 1e9:.1f}B parameters, GPU "
                      f"{gpu_bytes / GIB:.0f} GiB, {cpus} CPUs")


def mps_usable(env: dict[str, str]) -> str | None:
    """Whether the launcher's MPS daemon can run here: start it and stop it again (a second);
    None if it can, else why not."""
    problem = start_mps(env)
    if problem is None:
        stop_mps(env)
    return problem


# --- MPS: one control daemon for the launcher's engines ------------------------------------------
def mps_env(cache_dir: str) -> dict[str, str]:
    """Where the daemon and its clients meet: a pipe and a log directory of this launcher's own,
    so it never attaches to (or stops) a daemon that something else runs on the node."""
    base = Path(cache_dir or "/tmp").expanduser().absolute() / "mps"
    return {"CUDA_MPS_PIPE_DIRECTORY": str(base / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(base / "log")}


def mps_start_command() -> list[str]:
    return ["nvidia-cuda-mps-control", "-d"]


def mps_stop_command() -> tuple[list[str], str]:
    """argv and the standard input that stops the daemon (it reads commands from stdin)."""
    return ["nvidia-cuda-mps-control"], "quit\n"


def start_mps(env: dict[str, str]) -> str | None:
    """Start the daemon; None on success, else why not (one line)."""
    if not shutil.which(mps_start_command()[0]):
        return "nvidia-cuda-mps-control not found (the NVIDIA driver utilities are not installed)"
    for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(mps_start_command(), env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-cuda-mps-control: {exc}"
    if done.returncode != 0:
        return f"nvidia-cuda-mps-control -d exited {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}"
    return None


def stop_mps(env: dict[str, str]) -> None:
    argv, stdin = mps_stop_command()
    try:
        subprocess.run(argv, input=stdin, env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=30)
    except (OSError, subprocess.SubprocessError):
        pass
