"""`fill`: how much of one GPU each engine configuration uses, and what that serves.

    run.sh fill --fill-configs n1,n2,n4,n4+mps --fill-steps seed,small,rag --fill-raw n1 \\
        [--fill-profile-starts]

A configuration is `auto` (the launcher's defaults: it chooses the engines per GPU) or `n<K>` (K
engines sharing the one GPU, `--engines K --engines-per-gpu K`; `n1` = `--no-fill-gpu`) plus
any of `+mps` (the launcher's MPS daemon, `--cuda-mps`), `+sync` (`--no-async-scheduling`),
`+eager` (`--enforce-eager`), `+graphs8k` / `+graphs16k` (CUDA graphs captured up to 8,192- /
16,384-token steps), `+step64k` (`--max-num-batched-tokens 65536`), `+aot` (`--aot-compile`) and
`+sleep` (vLLM's `--enable-sleep-mode`, its dev endpoints on), `+nodet` (`--no-deterministic`:
what deterministic scores cost) and `+w8` (eight shim workers);
`best` is the one that served most small requests so far, and `CONFIG@a/b` runs steps a and b
for it instead of `--fill-steps`. Each is started (all K engines verified), then every step runs
through the shim, and for the configurations in `--fill-raw` also against raw vLLM (engine 0's
`/rerank`), each line with GPU busy %, power and per-process CPU %
(benchmarks/gpu/utilisation.py):

  seed    hey -n 5000 -c 50, the seed document's fixed body (shim /v1/rank, vLLM /rerank)
  small   3 short documents, a new query each time, c=50 (3,000 requests)
  rag     20 x ~390-token documents, c=32 (400 requests)
  long    10 x ~3,600-token documents, c=8
  mixed   small c=10 while long runs at c=8, then long alone
  det     the same 64 pairs alone, in one batch and under load (bit-identical in deterministic mode)
  profile py-spy dump of every engine core, three times during a small c=50 load (logs/pyspy-*.txt)
  probe   the fixed 200-pair score probe, compared with the first probe taken on this machine
          (a start with a lever must give the scores of a normal start, bit for bit)
  restart stop and start the configuration again (a second start: what a warm restart costs)
  sleep   vLLM sleep mode as a warm standby (`+sleep` configurations): sleep level 1 and wake_up,
          seconds and GPU memory each, then the probe after waking
  batch   `reranker batch` over 600 rag-shaped lines against the service's own rag c=32, with a
          small stream beside it (benchmarks/batch_throughput.py)
  inproc  engine 0's exact vLLM arguments and environment served in-process instead
          (benchmarks/inproc_engine.py: AsyncLLM, no HTTP, no API server), small c=50 and rag
          c=32: what the hop through vLLM's API server costs. Stops the launcher: put it last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import threading
import time

from benchmarks.gpu import harness as h

NAME = "fill"
SUMMARY = "engine configurations on one GPU (engines per GPU, MPS, CUDA graphs, ...): what each serves"

STEPS = ("seed", "small", "rag", "long", "mixed", "det", "profile", "probe", "restart", "sleep",
         "batch", "inproc")
GRAPH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# finer above 512 (a step pads up to the next captured size) and up to 16k tokens
GRAPH_SIZES_16K = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144,
                   8192, 12288, 16384)


def config_flags(config: str) -> tuple[int, list[str]]:
    """`n4+mps+sync` -> (4, launcher flags); `auto` -> (0, []): the launcher's own choice of
    engines per GPU (fill_gpu), `n1` one engine whatever it would choose."""
    head, *mods = config.split("+")
    if head == "auto":
        n, flags = 0, []
    elif not head.startswith("n") or not head[1:].isdigit():
        raise ValueError(f"configuration {config!r}: write auto|n<engines>[+mps][+sync][+eager]")
    else:
        n = int(head[1:])
        flags = ["--engines", str(n), "--engines-per-gpu", str(n)] if n > 1 else ["--no-fill-gpu"]
    known = {"mps": ["--cuda-mps"], "sync": ["--no-async-scheduling"], "eager": ["--enforce-eager"],
             # CUDA graphs for prefill steps up to 8k tokens (vLLM's default stops at 512, so a
             # reranker's steps run op by op from the engine core)
             "graphs8k": ["--", "--cudagraph-capture-sizes", *map(str, GRAPH_SIZES)],
             "graphs16k": ["--", "--cudagraph-capture-sizes", *map(str, GRAPH_SIZES_16K)],
             "step64k": ["--max-num-batched-tokens", "65536"],
             "aot": ["--aot-compile"],
             "sleep": ["--", "--enable-sleep-mode"],
             # what deterministic scores cost at this configuration (batch-invariant kernels off)
             "nodet": ["--no-deterministic"],
             # more shim workers in front of many engines
             "w8": ["--workers", "8"]}
    tail: list[str] = []
    for mod in mods:
        if mod not in known:
            raise ValueError(f"configuration {config!r}: unknown {mod!r} ({', '.join(known)})")
        if known[mod][0] == "--":  # vLLM's own flags go after the launcher's
            tail += known[mod][1:]
        else:
            flags += known[mod]
    return n, flags + (["--", *tail] if tail else [])


class StartupSampler(threading.Thread):
    """py-spy dumps of vLLM's API server and engine cores once a second while the launcher
    starts (logs/startup-pyspy-<config>.txt): where a start's seconds go, phase by phase."""

    def __init__(self, config: str) -> None:
        super().__init__(daemon=True)
        self.path = h.LOGS / f"startup-pyspy-{config}.txt"
        self.done = threading.Event()

    def run(self) -> None:
        import json

        from benchmarks.gpu.utilisation import _family, _role

        spy = shutil.which("py-spy")
        t0 = time.monotonic()
        with open(self.path, "w") as out:
            while spy and not self.done.wait(1.0):
                if not h.STATE.exists():
                    continue
                for proc in _family([json.loads(h.STATE.read_text())["pid"]]):
                    try:
                        role = _role(proc, " ".join(proc.cmdline()), proc.name())
                    except Exception:
                        continue
                    if role in ("api_server", "engine_core"):
                        dump = subprocess.run([spy, "dump", "--pid", str(proc.pid), "--nonblocking"],
                                              capture_output=True, text=True, timeout=20)
                        out.write(f"=== t={time.monotonic() - t0:.1f}s {role} {proc.pid}\n{dump.stdout}\n")
                        out.flush()


def start(clock: h.Clock, config: str, profile_start: bool = False) -> int | None:
    n, flags = config_flags(config)
    h.stop_launcher()
    sampler = StartupSampler(config) if profile_start else None
    if sampler:
        sampler.start()
    try:
        # sleep mode's /sleep and /wake_up are vLLM dev endpoints
        env = {"VLLM_SERVER_DEV_MODE": "1"} if "+sleep" in config else None
        if env is not None:
            env = {**h.cache_env(), **env}
        ready = h.start_launcher(config, flags, budget=min(420, clock.left() - 30), env=env)
        waited, n = h.wait_all_engines(n or None, 150)
        ready["all_engines_s"] = round(ready["seconds_to_ready"] + waited, 1)
        h.emit({**ready, "engines_per_gpu": n})
        return n
    except RuntimeError as exc:
        h.emit({"kind": "error", "step": "fill start", "config": config, "error": str(exc)[-3000:]})
        h.stop_launcher()
        return None
    finally:
        if sampler:
            sampler.done.set()


def step(clock: h.Clock, config: str, name: str, target: str) -> None:
    url = h.SHIM if target == "shim" else h.VLLM
    if name == "seed":
        path = "/v1/rank" if target == "shim" else "/rerank"
        body = h.SEED_BODY if target == "shim" else {"model": h.NAME, "query": h.SEED_BODY["query"],
                                                     "documents": h.SEED_BODY["docs"]}
        h.hey(config, target, url + path, body, c=50)
    elif name == "small":
        h.loadgen(clock, config, "small", targets=target, concurrency="50", requests=3000, est_s=30,
                  extra=["--procs", "4"])
    elif name == "rag":
        h.loadgen(clock, config, "rag", targets=target, concurrency="32", requests=400, est_s=40,
                  extra=["--procs", "2"])
    elif name == "long":
        h.loadgen(clock, config, "long", targets=target, concurrency="8", requests=100, est_s=40)
    elif name == "mixed":
        h.loadgen(clock, config, "mixed", targets=target, est_s=50)
    elif name == "det" and target == "shim":
        h.det_probe(clock, config, est_s=20)
    elif name == "profile" and target == "shim":
        profile(clock, config)
    elif name == "probe" and target == "shim":
        probe(config)
    elif name == "restart" and target == "shim":
        if clock.left() > 100:
            start(clock, config)
    elif name == "sleep" and target == "shim":
        sleep_wake(clock, config)
    elif name == "batch" and target == "shim":
        batch_job(clock, config)
    elif name == "inproc" and target == "shim":
        inproc(clock, config)


def engine_invocation() -> tuple[list[str], dict] | None:
    """Engine 0's vLLM API-server arguments and environment, read from the running process."""
    import json

    import psutil

    from benchmarks.gpu.utilisation import _family

    if not h.STATE.exists():
        return None
    module = "vllm.entrypoints.openai.api_server"
    for proc in _family([json.loads(h.STATE.read_text())["pid"]]):
        try:
            cmd = proc.cmdline()
            if module not in cmd:
                continue
            args = cmd[cmd.index(module) + 1:]
            port = next((a.split("=", 1)[1] if "=" in a else args[i + 1]
                         for i, a in enumerate(args) if a.split("=", 1)[0] == "--port"), None)
            if port == str(h.VLLM_PORT):  # engine 0
                return args, proc.environ()
        except (psutil.Error, IndexError):
            continue
    return None


def inproc(clock: h.Clock, config: str) -> None:
    """The running configuration's engine (one engine) served in-process by the benchmark
    itself: the launcher is stopped first, its vLLM arguments and environment reused."""
    import json
    import sys

    found = engine_invocation()
    if found is None or clock.left() < 150:
        h.emit({"kind": "skipped", "step": "inproc", "config": config,
                "reason": "no running engine" if found is None else "budget"})
        return
    argv, env = found
    h.stop_launcher()
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(h.ROOT)) if p),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "benchmarks.inproc_engine", "--model", str(h.MODEL_DIR),
           "--vllm-argv", json.dumps(argv)]
    if "--smoke" in h.LOADGEN_FLAGS:  # a CPU dry run
        cmd += ["--requests", "small=200,rag=20"]
    h.log(f"{config}: in-process engine")
    log_path = h.LOGS / f"inproc-{config}.log"
    try:
        with open(log_path, "w") as err:
            proc = subprocess.run(cmd, cwd=h.ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
                                  text=True, timeout=max(60, clock.left() - 10))
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        proc = subprocess.CompletedProcess(cmd, -1, out, "")
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            h.emit({**json.loads(line), "config": config + " (in-process)"})
    if proc.returncode != 0:
        h.emit({"kind": "error", "step": "inproc", "config": config, "rc": proc.returncode,
                "log": log_path.read_text(errors="replace")[-2000:]})


def batch_job(clock: h.Clock, config: str) -> None:
    """`reranker batch` against the running service beside its own rag c=32 figure, with a small
    stream beside the job (benchmarks/batch_throughput.py), the step's GPU busy % on the line."""
    import json
    import sys

    if clock.left() < 150:
        h.emit({"kind": "skipped", "step": "batch", "config": config, "reason": "budget"})
        return
    cmd = [sys.executable, "-m", "benchmarks.batch_throughput", "--service", h.SHIM,
           "--tokenizer", str(h.MODEL_DIR), "--requests", "600"]
    with h.measured():
        try:
            proc = subprocess.run(cmd, cwd=h.ROOT, capture_output=True, text=True,
                                  timeout=max(30, clock.left() - 10))
        except subprocess.TimeoutExpired:
            h.emit({"kind": "skipped", "step": "batch", "config": config, "reason": "timed out"})
            return
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                h.emit({**json.loads(line), "kind": "batch", "config": config})
        if proc.returncode != 0:
            h.emit({"kind": "error", "step": "batch", "config": config, "stderr": proc.stderr[-2000:]})


def probe(config: str, label: str = "") -> None:
    """The fixed probe's scores against the first probe taken on this machine, bit for bit."""
    import json

    ref_path = h.RESULTS.parent / "probe-reference.json"
    scores = h.fixed_probe()
    if not scores:
        return
    line = {"kind": "probe", "config": config + label, "pairs": sum(map(len, scores))}
    if ref_path.exists():
        ref = json.loads(ref_path.read_text())
        flat_ref = [x for row in ref["scores"] for x in row]
        flat = [x for row in scores for x in row]
        line.update({"reference": ref["config"],
                     "identical": sum(a == b for a, b in zip(flat_ref, flat)),
                     "max_abs_diff": max(abs(a - b) for a, b in zip(flat_ref, flat))})
    else:
        ref_path.write_text(json.dumps({"config": config, "scores": scores}))
        line["reference"] = "this"
    h.emit(line)


def _gpu_memory_used_gib() -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return round(pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30, 2)
    except Exception:
        return None


def sleep_wake(clock: h.Clock, config: str) -> None:
    """Sleep level 1 (weights to host memory, KV cache dropped) and wake_up on engine 0, timed,
    with the GPU memory before, asleep and awake; then the probe through the shim."""
    import httpx

    if "+sleep" not in config or clock.left() < 40:
        h.emit({"kind": "skipped", "step": "sleep", "config": config,
                "reason": "needs a +sleep configuration" if "+sleep" not in config else "budget"})
        return
    line: dict = {"kind": "sleep", "config": config, "level": 1, "gib_awake": _gpu_memory_used_gib()}
    try:
        with httpx.Client(base_url=h.VLLM, timeout=120) as client:
            t = time.monotonic()
            r = client.post("/sleep", params={"level": 1})
            line["sleep_s"] = round(time.monotonic() - t, 2)
            line["sleep_status"] = r.status_code
            line["gib_asleep"] = _gpu_memory_used_gib()
            line["is_sleeping"] = client.get("/is_sleeping").text[:100]
            t = time.monotonic()
            r = client.post("/wake_up")
            line["wake_s"] = round(time.monotonic() - t, 2)
            line["wake_status"] = r.status_code
            line["gib_woken"] = _gpu_memory_used_gib()
    except httpx.HTTPError as exc:
        line["error"] = repr(exc)[:300]
    h.emit(line)
    probe(config, " (after wake)")


def profile(clock: h.Clock, config: str) -> None:
    """Where each engine core spends its time under small requests: py-spy dumps (py-spy record
    hung on the GPU machine; a dump is one stack sample per thread)."""
    spy = shutil.which("py-spy")
    if not spy or clock.left() < 30:
        h.emit({"kind": "skipped", "step": "profile", "config": config,
                "reason": "py-spy not installed" if not spy else "budget"})
        return
    import json
    import os

    from benchmarks.gpu.utilisation import engine_cores

    roots = [os.getpid()] + ([json.loads(h.STATE.read_text())["pid"]] if h.STATE.exists() else [])
    cores = engine_cores(roots)
    load = threading.Thread(target=h.loadgen, args=(clock, f"{config} (profiled)", "small"),
                            kwargs={"targets": "shim", "concurrency": "50", "requests": 3000,
                                    "est_s": 30, "extra": ["--procs", "4"]})
    load.start()
    time.sleep(3)
    for i in range(3):
        for pid in cores:
            out = subprocess.run([spy, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True,
                                 text=True, timeout=30)
            (h.LOGS / f"pyspy-{config}-{pid}-{i}.txt").write_text(out.stdout + out.stderr)
        time.sleep(1.0)
    load.join()
    h.emit({"kind": "profile", "config": config, "engine_cores": cores, "dumps": 3,
            "files": f"logs/pyspy-{config}-*.txt"})


def best_config() -> str | None:
    """The configuration measured on this machine with the most small c=50 requests/s through
    the shim (what `best` stands for, so a later call can go on with the winner unattended)."""
    import json

    if not h.RESULTS.exists():
        return None
    best: tuple[float, str] | None = None
    for line in h.RESULTS.read_text().splitlines():
        rec = json.loads(line)
        if (rec.get("phase") == "fill" and rec.get("kind") == "result" and rec.get("target") == "shim"
                and rec.get("workload") == "small" and not rec.get("errors")
                and "(" not in rec.get("config", "(")):
            if best is None or rec["req_s"] > best[0]:
                best = (rec["req_s"], rec["config"])
    return best[1] if best else None


def phase_fill(clock: h.Clock, configs: list[str], steps: list[str], raw: list[str],
               profile_starts: bool = False) -> None:
    for name in steps:
        if name not in STEPS:
            raise ValueError(f"unknown step {name!r}; choose from {', '.join(STEPS)}")
    for entry in configs:
        # `config@a/b` runs steps a and b for that configuration instead of the common ones;
        # `best` is resolved when reached, from everything measured so far (this call included)
        config, _, own_steps = entry.partition("@")
        with_raw = config in raw
        if config == "best":
            config = best_config()
            h.emit({"kind": "fill_best", "best": config})
            if config is None:
                continue
        if clock.left() < 120:
            h.emit({"kind": "skipped", "step": "fill", "config": config, "reason": "device-call budget"})
            continue
        running = h.launcher_running()
        if not (running and running["flags"] == config_flags(config)[1]):
            if start(clock, config, profile_starts) is None:
                continue
        for name in own_steps.split("/") if own_steps else steps:
            if with_raw and name in ("seed", "small", "rag", "long", "mixed"):
                step(clock, config, name, "vllm")
            step(clock, config, name, "shim")
    h.stop_launcher()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fill-configs", default="n1,n2,n4,n4+mps",
                        help="engine configurations, n<K>[+mps][+sync][+eager][+graphs8k|+graphs16k]"
                             "[+step64k][+aot][+sleep][+nodet][+w8], `best`, CONFIG@step/step")
    parser.add_argument("--fill-steps", default="seed,small,rag", help=f"steps per configuration: {', '.join(STEPS)}")
    parser.add_argument("--fill-raw", default="n1", help="configurations also measured on raw vLLM")
    parser.add_argument("--fill-profile-starts", action="store_true",
                        help="py-spy dumps of vLLM once a second while each configuration starts")


def run(clock: h.Clock, args: argparse.Namespace) -> None:
    phase_fill(clock, [c for c in args.fill_configs.split(",") if c],
               [s for s in args.fill_steps.split(",") if s], args.fill_raw.split(","),
               args.fill_profile_starts)
