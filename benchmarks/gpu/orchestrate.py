"""GPU benchmark phases, run by benchmarks/gpu/run.sh on the device machine (or any GPU box).

    python3 -m benchmarks.gpu.orchestrate baseline --budget 500
    python3 -m benchmarks.gpu.orchestrate levers   --budget 540
    python3 -m benchmarks.gpu.orchestrate custom --config mnbt32k --flags "--max-num-batched-tokens 32768" \\
        --workloads seed,rag,long

Phases (each one fits a 10-minute device call; a step that would not fit the budget is skipped
and reported as such):
  baseline  cold start of the launcher (fresh compile cache) and a restart that reuses it (seconds
            to /ready, both), then every workload against the shim and raw vLLM side by side, then
            seed-repeat through an extra shim with the score cache on. Leaves the launcher running.
  levers    shim_overhead (pinned CPUs), shim levers through extra shims in front of the running
            vLLM (engine-api rerank, pairs-per-engine-call, several shim processes), then engine
            levers, each a launcher restart (max-num-batched-tokens 16384 / 32768, prefix caching
            off), each with seed, rag c=8 and rag c=32 on both targets.
  custom    one launcher configuration (--flags) and the workloads named.
  fp8       bf16 against --quantization fp8 (rag c=8/32, long, score drift on fixed pairs), then
            warm restarts with vLLM's engine core in-process and with the default.
  startup   cold and warm starts to /ready with the launcher's start-up timeline: the defaults
            (fork, cache dir, --model-impl vllm, startup plan) and the levers off (baseline),
            plus baseline+fork and the defaults without the startup plan; fixed-pair scores of
            every start compared with the first (the levers must not change them).
  determinism  deterministic mode against --no-deterministic: the same 64 pairs alone, in one
            batch of 64 and under c=32 load (benchmarks/determinism.py), rag c=32 and seed.
  multigpu  N = 1, 2, 4, 8 GPUs (those nvidia-smi lists; BENCH_GPUS overrides) in one
            pod, as N engines behind the shim (--multi-gpu-mode engines) and as one vLLM with
            --data-parallel-size N: rag c=32*N, seed with hey (c=50*N), long c=8*N, mixed; then
            throughput per GPU against N=1 (`{"kind": "multigpu"}` lines). About 4 min a step:
            steps done on this machine are skipped, so repeat the call until the summary has them
            all (--ns 1,2 / --modes engines to choose; --fresh to measure again).

Everything goes to $BENCH_WORK/results.jsonl (default /tmp/bench) and to stdout as JSON lines;
the launcher's and shims' logs go to $BENCH_WORK/logs. A launcher left running is remembered in
$BENCH_WORK/launcher.json, so the next phase (the next device call) can reuse it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/bench"))
MODEL_DIR = Path(os.environ.get("BENCH_MODEL_DIR", WORK / "models" / "qwen3-reranker-0.6b"))
NAME = "qwen3-reranker-0.6b"
SHIM_PORT = int(os.environ.get("BENCH_SHIM_PORT", 8000))
VLLM_PORT = int(os.environ.get("BENCH_VLLM_PORT", 8001))
EXTRA_PORT = int(os.environ.get("BENCH_EXTRA_PORT", 8100))      # extra shims: 8100, 8101, ...
# local dry runs: e.g. BENCH_LAUNCHER_FLAGS="--dtype float32 --enforce-eager" BENCH_LOADGEN_FLAGS=--smoke
LAUNCHER_FLAGS = shlex.split(os.environ.get("BENCH_LAUNCHER_FLAGS", ""))
LOADGEN_FLAGS = shlex.split(os.environ.get("BENCH_LOADGEN_FLAGS", ""))
OVERHEAD_FLAGS = shlex.split(os.environ.get("BENCH_OVERHEAD_FLAGS", ""))
SHIM, VLLM = f"http://127.0.0.1:{SHIM_PORT}", f"http://127.0.0.1:{VLLM_PORT}"
MAX_MODEL_LEN = int(os.environ.get("BENCH_MAX_MODEL_LEN", 8192))
RESULTS = WORK / "results.jsonl"
LOGS = WORK / "logs"
STATE = WORK / "launcher.json"
CACHE = WORK / "vllm-cache"   # VLLM_CACHE_ROOT: the compile cache a restart reuses


def cache_env() -> dict:
    """All compile caches under one directory (what a persistent volume would hold)."""
    return {"VLLM_CACHE_ROOT": str(CACHE), "TORCHINDUCTOR_CACHE_DIR": str(CACHE / "inductor"),
            "TRITON_CACHE_DIR": str(CACHE / "triton")}


CLOCK: Clock | None = None  # the phase's budget, set by main()


class Clock:
    def __init__(self, budget: float) -> None:
        self.start = time.monotonic()
        self.budget = budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


def versions() -> dict:
    out = {}
    for pkg in ("vllm", "torch", "transformers", "fastapi", "uvicorn", "httpx", "aiohttp"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


COMMON: dict = {}


_STEP_LINES: list[dict] | None = None  # lines of the load step running now (measured())


def emit(line: dict) -> None:
    line = {**line, **COMMON}
    if _STEP_LINES is not None:  # written when the step ends, with its utilisation
        _STEP_LINES.append(line)
        return
    text = json.dumps(line, ensure_ascii=False)
    print(text, flush=True)
    with open(RESULTS, "a") as fh:
        fh.write(text + "\n")
    if os.environ.get("OUT"):  # the device call's $OUT: what a call cut off by its limit still returns
        with open(Path(os.environ["OUT"]) / "results-live.jsonl", "a") as fh:
            fh.write(text + "\n")


@contextlib.contextmanager
def measured():
    """A load step: every line it emits carries GPU busy %, power and per-process CPU % over the
    step (benchmarks/gpu/utilisation.py), so no throughput figure stands without them."""
    global _STEP_LINES
    if _STEP_LINES is not None:  # already inside a step
        yield
        return
    from benchmarks.gpu.utilisation import Utilisation

    _STEP_LINES = []
    roots = [os.getpid()]
    if STATE.exists():  # a launcher started by an earlier call is no child of this process
        roots.append(json.loads(STATE.read_text())["pid"])
    util = Utilisation(roots)
    try:
        util.__enter__()
    except Exception:  # noqa: BLE001 - the load step still runs; the error is in the log
        import traceback

        traceback.print_exc()
    try:
        yield
    finally:
        lines, _STEP_LINES = _STEP_LINES, None
        try:
            util.__exit__(None, None, None)
            extra = util.fields()
        except Exception as exc:  # noqa: BLE001 - the figures still count without it
            import traceback

            traceback.print_exc()
            extra = {"utilisation_error": f"{type(exc).__name__}: {exc}"[:300]}
        for line in lines:
            emit({**line, **extra})


def log(msg: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- the launcher (vLLM + shim) ------------------------------------------------------------------
def start_launcher(config: str, flags: list[str], budget: float = 420, env: dict | None = None,
                   cold: bool | None = None) -> dict:
    """Start the launcher and wait for the shim's /ready. `env` overrides the environment (a
    None value removes the variable; given, it replaces cache_env()); `cold` labels the start
    when the caller knows better than the shared compile cache's state."""
    if CLOCK is not None:  # never run past the device call's own limit
        budget = min(budget, CLOCK.left() - 15)
    LOGS.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 60
    while engines_serving() or get_ok(SHIM + "/livez"):  # a previous one still stopping
        if time.monotonic() > deadline:
            raise RuntimeError(f"ports {SHIM_PORT}/{VLLM_PORT} still serve: stop that first")
        time.sleep(0.5)
    if cold is None:
        cold = not (CACHE / "torch_compile_cache").exists()
    cmd = [sys.executable, "-m", "launcher", "--model", str(MODEL_DIR), "--served-model-name", NAME,
           "--host", "127.0.0.1", "--port", str(SHIM_PORT), "--vllm-port", str(VLLM_PORT),
           "--rate-limit", "", "--max-model-len", str(MAX_MODEL_LEN), *LAUNCHER_FLAGS, *flags]
    if env is None:
        env = {**os.environ, **cache_env(), "PYTHONUNBUFFERED": "1"}
    else:
        env = {k: v for k, v in {**os.environ, "PYTHONUNBUFFERED": "1", **env}.items() if v is not None}
    log_path = LOGS / f"launcher-{config}.log"
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    started = time.monotonic()
    with open(log_path, "a") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    STATE.write_text(json.dumps({"pid": proc.pid, "config": config, "flags": flags}))
    vllm_s = None
    while time.monotonic() - started < budget:
        if proc.poll() is not None:
            raise RuntimeError(f"launcher exited {proc.returncode}: see {log_path}\n"
                               + log_path.read_text(errors="replace")[-3000:])
        if vllm_s is None and get_ok(VLLM + "/health"):
            vllm_s = time.monotonic() - started
        if vllm_s is not None and time.monotonic() - started > vllm_s + 60:
            # the engine is up but the shim will not take traffic (its canary failed): waiting
            # out the budget would only burn device time
            reason = ready_reason()
            stop_launcher()
            raise RuntimeError(f"{config}: vLLM healthy for 60 s but the shim is not ready: {reason}")
        if get_ok(SHIM + "/ready"):
            ready = {"kind": "ready", "config": config, "flags": " ".join(flags),
                     "start": "cold" if cold else "warm (compile cache reused)",
                     "seconds_to_ready": round(time.monotonic() - started, 1),
                     "vllm_health_s": round(vllm_s, 1) if vllm_s else None,
                     "target_s": 60 if cold else 30}  # start-up targets: cold <= 60 s, warm <= 30 s
            ready.update(engine_facts(log_path))
            timeline = launcher_timeline(log_path, log_offset)
            if timeline:
                ready["timeline"] = timeline
            return ready
        time.sleep(0.25)
    stop_launcher()
    raise RuntimeError(f"launcher not ready after {budget} s: {log_path}")


def engines_serving(most: int = 8) -> bool:
    """Some vLLM of a previous launcher still answers (engine i listens on VLLM_PORT + i)."""
    return any(get_ok(f"http://127.0.0.1:{VLLM_PORT + i}/health") for i in range(most))


def ready_reason() -> str:
    try:
        return httpx.get(SHIM + "/ready", timeout=5).text[:500]
    except httpx.HTTPError as exc:
        return repr(exc)


def engine_facts(log_path: Path) -> dict:
    """A few numbers vLLM prints at start (compile time, KV cache, batch limits)."""
    import re

    text = log_path.read_text(errors="replace")
    facts = {}
    for key, pattern in (("torch_compile_s", r"torch\.compile (?:took|takes) ([\d.]+) s in total"),
                         ("graph_capture_s", r"Graph capturing finished in ([\d.]+) secs"),
                         ("engine_init_s", r"init engine .* took ([\d.]+) s"),
                         ("weights_load_s", r"Loading weights took ([\d.]+) seconds"),
                         ("max_num_batched_tokens", r"max_num_batched_tokens=(\d+)"),
                         ("max_num_seqs", r"max_num_seqs=(\d+)"),
                         ("kv_cache_tokens", r"GPU KV cache size: ([\d,]+) tokens")):
        found = re.findall(pattern, text)
        if found:
            facts[key] = found[-1].replace(",", "")
    return facts


def launcher_timeline(log_path: Path, offset: int = 0, wait_s: float = 3.0) -> dict | None:
    """The launcher's own `startup timeline` line for this start (launcher/timeline.py): seconds
    since launch of each phase of vLLM's start-up, the durations between them, vLLM's figures."""
    deadline = time.monotonic() + wait_s
    while True:
        with open(log_path, errors="replace") as fh:
            fh.seek(offset)
            for line in fh:
                if '"startup timeline"' in line and line.startswith("{"):
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    return {k: v for k, v in record.items()
                            if k not in ("time", "level", "name", "message")}
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def launcher_running() -> dict | None:
    if not STATE.exists():
        return None
    state = json.loads(STATE.read_text())
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        return None
    return state if get_ok(SHIM + "/ready") else None


def stop_launcher() -> None:
    if not STATE.exists():
        return
    import psutil

    pid = json.loads(STATE.read_text())["pid"]
    STATE.unlink()
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = proc.children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(90)
    except psutil.TimeoutExpired:
        proc.kill()
    for child in family:  # vLLM and the shim run in their own sessions: none may outlive this
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (engines_serving() or get_ok(SHIM + "/livez")):
        time.sleep(0.5)
    time.sleep(2)  # GPU memory given back


def ensure_launcher(config: str, flags: list[str]) -> None:
    state = launcher_running()
    if state and state["flags"] == flags:
        log(f"launcher already running with {config}")
        return
    stop_launcher()
    emit(start_launcher(config, flags))


# --- extra shims in front of the running vLLM ----------------------------------------------------
class Shims:
    """N extra shim processes (mode shim) with some settings, on ports EXTRA_PORT+."""

    def __init__(self, n: int = 1, **settings: str) -> None:
        self.procs, self.urls = [], []
        env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
        env.update({"RERANKER_MODE": "shim", "RERANKER_VLLM_URL": VLLM,
                    "RERANKER_MODEL": str(MODEL_DIR), "RERANKER_SERVED_MODEL_NAME": NAME,
                    "RERANKER_HOST": "127.0.0.1", "RERANKER_RATE_LIMIT": "",
                    "RERANKER_MAX_MODEL_LEN": str(MAX_MODEL_LEN)})
        env.update({f"RERANKER_{k.upper()}": v for k, v in settings.items()})
        for i in range(n):
            port = EXTRA_PORT + i
            env_i = {**env, "RERANKER_PORT": str(port)}
            with open(LOGS / f"shim-{port}.log", "a") as fh:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT,
                                                   env=env_i, stdout=fh, stderr=subprocess.STDOUT,
                                                   start_new_session=True))
            self.urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        for url, proc in zip(self.urls, self.procs):
            while not get_ok(url + "/ready"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"extra shim {url} did not start")
                time.sleep(0.2)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- load --------------------------------------------------------------------------------------
def loadgen(clock: Clock, config: str, workloads: str, *, shim: str | list[str] = SHIM,
            vllm: str = VLLM, targets: str = "shim,vllm", concurrency: str = "",
            requests: int = 0, est_s: float = 60, extra: list[str] = ()) -> None:
    if clock.left() < est_s:
        emit({"kind": "skipped", "config": config, "workload": workloads, "concurrency": concurrency,
              "reason": f"device-call budget: {clock.left():.0f} s left, step needs ~{est_s:.0f} s"})
        return
    shim = ",".join(shim) if isinstance(shim, list) else shim
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--shim", shim, "--vllm", vllm,
           "--model", NAME, "--workloads", workloads, "--targets", targets,
           "--tokenizer", str(MODEL_DIR), "--max-model-len", str(MAX_MODEL_LEN),
           "--max-seconds", "30", "--label", config, "--meta", f"config={config}", *extra,
           *LOADGEN_FLAGS]
    if concurrency:
        cmd += ["--concurrency", concurrency]
    if requests:
        cmd += ["--requests", str(requests)]
    log(f"{config}: {workloads} c={concurrency or 'default'} on {targets}")
    with measured():
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  timeout=max(30, clock.left() - 5))
        except subprocess.TimeoutExpired:
            emit({"kind": "skipped", "config": config, "workload": workloads, "reason": "timed out"})
            return
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                emit({**json.loads(line), "config": config})
        if proc.returncode not in (0, 1):
            emit({"kind": "error", "config": config, "workload": workloads,
                  "stderr": proc.stderr[-2000:]})


def shim_overhead(clock: Clock, est_s: float = 90) -> None:
    if clock.left() < est_s:
        emit({"kind": "skipped", "step": "shim_overhead", "reason": "device-call budget"})
        return
    cmd = [sys.executable, "-m", "benchmarks.shim_overhead", "--pin", "--workloads", "seed,rag",
           "--latency-requests", "2000", "--throughput-requests", "20000", "--concurrency", "64",
           "--label", "gpu-host", *OVERHEAD_FLAGS]
    log("shim_overhead")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=est_s * 2)
    except subprocess.TimeoutExpired:
        emit({"kind": "skipped", "step": "shim_overhead", "reason": "timed out"})
        return
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            emit(json.loads(line))
    if proc.returncode not in (0, 1):
        emit({"kind": "error", "step": "shim_overhead", "stderr": proc.stderr[-2000:]})


# --- phases ------------------------------------------------------------------------------------
BASE_FLAGS: list[str] = []  # the launcher's defaults: token path, 32k batched tokens on GPU, auto workers


def phase_baseline(clock: Clock) -> None:
    stop_launcher()
    for d in (CACHE,):
        subprocess.run(["rm", "-rf", str(d)])
    emit(start_launcher("base", BASE_FLAGS))          # cold: empty compile cache
    stop_launcher()
    emit(start_launcher("base", BASE_FLAGS))          # restart: reuses the compile cache
    loadgen(clock, "base", "seed", est_s=40)
    loadgen(clock, "base", "rag", est_s=60)
    loadgen(clock, "base", "long", est_s=50)
    loadgen(clock, "base", "short", est_s=40)
    loadgen(clock, "base", "rag100", est_s=60)
    if clock.left() > 40:
        with Shims(score_cache="true") as shims:
            loadgen(clock, "score-cache", "seed-repeat", shim=shims.urls, targets="shim", est_s=30)
    # the launcher stays up for the next phase (it runs in its own session)


def phase_levers(clock: Clock) -> None:
    ensure_launcher("base", BASE_FLAGS)
    shim_overhead(clock)
    # shim levers: extra shims in front of the same running vLLM
    with Shims(engine_api="rerank") as s:
        loadgen(clock, "engine-api=rerank", "seed,rag", shim=s.urls, targets="shim", est_s=45)
    for n in (16, 256):
        with Shims(pairs_per_engine_call=str(n)) as s:
            loadgen(clock, f"pairs-per-engine-call={n}", "rag,rag100", shim=s.urls, targets="shim",
                    concurrency="32", est_s=40)
    for n in (2, 4):
        with Shims(n) as s:
            loadgen(clock, f"shim-processes={n}", "seed,short", shim=s.urls, targets="shim",
                    est_s=25)
    # engine levers: each a launcher restart
    for config, flags in (("mnbt=32768", ["--max-num-batched-tokens", "32768"]),
                          ("prefix-caching=off", ["--no-enable-prefix-caching"]),
                          ("mnbt=16384", ["--max-num-batched-tokens", "16384"])):
        if clock.left() < 150:
            emit({"kind": "skipped", "config": config, "reason": "device-call budget"})
            continue
        stop_launcher()
        emit(start_launcher(config, flags))
        loadgen(clock, config, "rag", est_s=50)
        loadgen(clock, config, "seed", est_s=35)
    stop_launcher()


def phase_custom(clock: Clock, config: str, flags: list[str], workloads: str, targets: str,
                 concurrency: str) -> None:
    ensure_launcher(config, flags)
    for w in workloads.split(","):
        loadgen(clock, config, w, targets=targets, concurrency=concurrency, est_s=40)


# hey travels to the device machine in .whl (docs/gpu.md); here it is in .tools
HEY = os.environ.get("BENCH_HEY", str(ROOT / ".tools" / "hey")
                     if (ROOT / ".tools" / "hey").exists() else str(ROOT / ".whl" / "hey"))
SEED_BODY = {"query": "如何申请差旅报销", "docs": ["员工手册第3章", "财务系统操作指南", "OA审批流程说明"]}


HEY_N = int(os.environ.get("BENCH_HEY_N", 5000))  # dry runs on a CPU: fewer


def hey(config: str, target: str, url: str, body: dict, n: int = HEY_N, c: int = 50) -> None:
    """The seed document's own load test: `hey -n 5000 -c 50 -m POST` with a fixed body."""
    body_file = WORK / f"hey-{target}.json"
    body_file.write_text(json.dumps(body, ensure_ascii=False))
    cmd = [HEY, "-n", str(n), "-c", str(c), "-m", "POST", "-T", "application/json",
           "-D", str(body_file), url]
    log(f"{config}: hey -n {n} -c {c} {url}")
    with measured():
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            emit({"kind": "error", "config": config, "target": target, "error": f"hey: {exc}"})
            return
        emit({"kind": "hey", "config": config, "target": target, "workload": "seed", "concurrency": c,
              "requests": n, **hey_figures(text, n, c)})


def hey_figures(text: str, n: int, c: int) -> dict:
    """Throughput, latency percentiles and errors from hey's text report."""
    import re

    def grab(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", text))
    return {"req_s": grab(r"Requests/sec:\s+([\d.]+)"),
            "p50_ms": _ms(grab(r"50%+ in ([\d.]+) secs")), "p95_ms": _ms(grab(r"95%+ in ([\d.]+) secs")),
            "p99_ms": _ms(grab(r"99%+ in ([\d.]+) secs")),
            "status_codes": {k: int(v) for k, v in codes.items()},
            # hey sends n rounded down to a multiple of c
            "errors": (n // c) * c - int(codes.get("200", 0))}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def phase_batching(clock: Clock, budgets: list[int]) -> None:
    """Issue 11: cross-request batching and priority dispatch (the launcher's defaults) against
    the same shim with batching off (the old one-call-per-request path) and raw vLLM, same
    engine, same run: hey seed c=50/c=120, mixed, rag/long; then the engine token budget."""
    ensure_launcher("defaults", [])
    vllm_seed = {"model": NAME, "query": SEED_BODY["query"], "documents": SEED_BODY["docs"]}
    with Shims(1, batching="false") as old:
        for c in (50, 120):
            hey("defaults", "shim", SHIM + "/v1/rank", SEED_BODY, c=c)
            hey("defaults", "shim-nobatch", old.urls[0] + "/v1/rank", SEED_BODY, c=c)
            hey("defaults", "vllm", VLLM + "/rerank", vllm_seed, c=c)
        loadgen(clock, "defaults", "mixed", targets="shim,vllm", est_s=90)
        loadgen(clock, "nobatch", "mixed", shim=old.urls, targets="shim", est_s=45)
        loadgen(clock, "defaults", "rag", targets="shim,vllm", est_s=60)
        loadgen(clock, "nobatch", "rag", shim=old.urls, targets="shim", est_s=30)
        loadgen(clock, "defaults", "long,rag100", targets="shim,vllm", est_s=60)
    for budget in budgets:
        with Shims(1, engine_token_budget=str(budget)) as shim:
            loadgen(clock, f"budget{budget}", "mixed", shim=shim.urls, targets="shim", est_s=45)


class CpuSample:
    """CPU seconds per process (vLLM API server, engine core, shim workers, clients) over a step,
    as % of one core: which process saturates first is where per-request cost must go down."""

    def __init__(self, config: str, step: str, shim_url: str = SHIM) -> None:
        self.config, self.step, self.shim_url = config, step, shim_url

    @staticmethod
    def _snapshot() -> dict:
        import psutil

        snap = {}
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                if "python" not in cmd and "VLLM" not in (proc.info["name"] or "") and "hey" not in cmd:
                    continue
                t = proc.cpu_times()
                snap[proc.info["pid"]] = (proc.info["name"], cmd[:100], t.user + t.system)
            except psutil.Error:
                continue
        return snap

    def _batch_stats(self) -> tuple[float, float]:
        from benchmarks.loadgen import metric_samples, metric_sum

        try:
            samples = metric_samples(self.shim_url, timeout=5)
        except httpx.HTTPError:
            return 0.0, 0.0
        return (metric_sum(samples, "reranker_engine_batch_prompts_sum"),
                metric_sum(samples, "reranker_engine_batch_prompts_count"))

    def __enter__(self):
        self.t0, self.before, self.b0 = time.monotonic(), self._snapshot(), self._batch_stats()
        return self

    def __exit__(self, *exc):
        seconds = time.monotonic() - self.t0
        after, b1 = self._snapshot(), self._batch_stats()
        rows = []
        for pid, (name, cmd, cpu) in after.items():
            if pid in self.before:
                used = cpu - self.before[pid][2]
                if used > 0.05 * seconds:
                    rows.append({"pid": pid, "name": name, "cmd": cmd,
                                 "cpu_pct": round(100 * used / seconds, 1)})
        rows.sort(key=lambda r: -r["cpu_pct"])
        calls = b1[1] - self.b0[1]
        emit({"kind": "cpu", "config": self.config, "step": self.step, "seconds": round(seconds, 1),
              "engine_calls": calls, "prompts_per_call": round((b1[0] - self.b0[0]) / calls, 2)
              if calls else None, "processes": rows[:12]})


def variant_settings(variant: str) -> dict[str, str]:
    """A shim variant of `front` / `mix`: key=value, several joined by `+` (a=1+b=2)."""
    return dict(kv.split("=", 1) for kv in variant.split("+"))


def front_step(clock: Clock, config: str, url: str, target: str = "shim") -> None:
    """One front-end configuration: hey seed c=50 and a varied small workload at c=50, each
    with per-process CPU and the shim's prompts per engine call."""
    if clock.left() < 50:
        emit({"kind": "skipped", "config": config, "reason": "device-call budget"})
        return
    path = "/v1/rank" if target == "shim" else "/rerank"
    body = SEED_BODY if target == "shim" else {"model": NAME, "query": SEED_BODY["query"],
                                               "documents": SEED_BODY["docs"]}
    with CpuSample(config, "hey seed c=50", url):
        hey(config, target, url + path, body, c=50)
    with CpuSample(config, "small c=50", url):
        loadgen(clock, config, "small", shim=url, targets=target if target == "shim" else "vllm",
                vllm=url, concurrency="50", requests=3000, est_s=40)


def phase_front(clock: Clock, variants: list[str]) -> None:
    """Issue 11, the front end: where a small request's time goes at c=50 (seed hey and a varied
    small workload), per process, for the defaults, raw vLLM, and shim variants (engine calls in
    flight per worker, worker count) in front of the same engine; then two engines sharing the
    GPU (--engines-per-gpu 2), then vLLM with two API servers. `--variants ""` skips the shim
    variants (RESULTS.md has them) to leave the time to the engine configurations."""
    ensure_launcher("defaults", [])
    loadgen(clock, "defaults", "small", targets="shim,vllm", concurrency="1", requests=300, est_s=25)
    front_step(clock, "defaults", SHIM)
    front_step(clock, "raw-vllm", VLLM, target="vllm")
    hey("defaults", "shim", SHIM + "/v1/rank", SEED_BODY, c=120)
    for variant in variants:  # e.g. engine_max_calls=2 or workers=8
        if clock.left() < 70:
            emit({"kind": "skipped", "config": variant, "reason": "device-call budget"})
            continue
        with Shims(1, **variant_settings(variant)) as shims:
            front_step(clock, variant, shims.urls[0])
    if clock.left() > 150:  # two engine cores on the one GPU (the c=50 limit is one core's CPU)
        flags = ["--engines", "2", "--engines-per-gpu", "2"]
        stop_launcher()
        emit(start_launcher("engines-per-gpu=2", flags))
        # /ready is 200 once one engine is verified and the second starts after the first
        # (measured while the second is still starting, one engine core is busy and the
        # other's start-up competing for CPU). Measure only with both engines up.
        try:
            emit({"kind": "engines_up", "config": "engines-per-gpu=2",
                  "seconds": round(wait_all_engines(2, max(10, clock.left() - 80)), 1)})
            front_step(clock, "engines-per-gpu=2", SHIM)
        except RuntimeError as exc:
            emit({"kind": "error", "config": "engines-per-gpu=2", "error": str(exc)[:1000]})
    if clock.left() > 120:
        flags = ["--", "--api-server-count", "2"]
        stop_launcher()
        emit(start_launcher("api-servers=2", flags))
        front_step(clock, "api-servers=2", SHIM)
        front_step(clock, "api-servers=2 raw-vllm", VLLM, target="vllm")


def phase_mix(clock: Clock, flags: list[str], budgets: list[int], targets: str = "shim,vllm",
              variants: list[str] = (), variant_steps: str = "mixed,det,rag") -> None:
    """Issue 11, the engine side, with one launcher configuration (`flags`, default: defaults):
    mixed (small under long saturation) at the default engine token budget and at `budgets`
    (engine-wide, split across the shim's workers), then rag c=8/32, long, rag100, each beside
    raw vLLM on the same engine."""
    config = "defaults" if not flags else " ".join(flags)
    ensure_launcher(config, flags)
    loadgen(clock, config, "mixed", targets=targets, est_s=50 * len(targets.split(",")))
    for budget in budgets:
        with Shims(1, engine_token_budget=str(budget)) as shim:
            loadgen(clock, f"budget{budget}", "mixed", shim=shim.urls, targets="shim", est_s=50)
    # scores of the configuration measured: bit-identical alone, batched (cut across calls
    # right after interactive work, bulk_split_to_budget) and under load
    det_probe(clock, config, est_s=15)
    for variant in variants:  # e.g. bulk_split_to_budget=false
        with Shims(1, **variant_settings(variant)) as shim:
            loadgen(clock, variant, "mixed", shim=shim.urls, targets="shim", est_s=50)
            if "det" in variant_steps:
                det_probe(clock, variant, est_s=15, url=shim.urls[0])
            if "rag" in variant_steps:  # rag requests (~9k tokens) are bulk work too
                loadgen(clock, variant, "rag", shim=shim.urls, targets="shim", est_s=45)
    loadgen(clock, config, "rag", targets="shim,vllm", est_s=70)
    loadgen(clock, config, "long,rag100", targets="shim,vllm", est_s=70)
    with CpuSample(config, "hey seed c=50"):
        hey(config, "shim", SHIM + "/v1/rank", SEED_BODY, c=50)


def score_probe(seed: int = 7, queries: int = 8, docs: int = 25) -> list[list[float]]:
    """Scores of a fixed set of pairs (mixed lengths) through the running shim."""
    import random

    from benchmarks.loadgen import make_query, make_text

    rng = random.Random(seed)
    out = []
    for _ in range(queries):
        body = {"model": NAME, "query": make_query(rng),
                "documents": [make_text(rng, rng.randint(5, 400)) for _ in range(docs)]}
        r = httpx.post(SHIM + "/v1/rerank", json=body, timeout=120)
        r.raise_for_status()
        scores = [0.0] * docs
        for item in r.json()["results"]:
            scores[item["index"]] = item["relevance_score"]
        out.append(scores)
    return out


def drift(ref: list[list[float]], other: list[list[float]]) -> dict:
    """How far other's scores are from ref's: absolute differences and ranking agreement."""
    diffs = [abs(a - b) for ra, rb in zip(ref, other) for a, b in zip(ra, rb)]
    order = lambda row: sorted(range(len(row)), key=lambda i: -row[i])  # noqa: E731
    top1 = sum(order(a)[0] == order(b)[0] for a, b in zip(ref, other))
    top5 = [len(set(order(a)[:5]) & set(order(b)[:5])) / 5 for a, b in zip(ref, other)]
    return {"pairs": len(diffs), "max_abs_diff": round(max(diffs), 5),
            "mean_abs_diff": round(sum(diffs) / len(diffs), 5),
            "top1_agreement": f"{top1}/{len(ref)}", "top5_overlap": round(sum(top5) / len(top5), 3)}


def phase_fp8(clock: Clock) -> None:
    """bf16 against vLLM's online FP8 (W8A8 dynamic) on the GPU-bound workloads, same run, with
    the score drift FP8 causes; then restart timings: engine core in-process against the default."""
    quick = ["--max-seconds", "12"]
    stop_launcher()
    subprocess.run(["rm", "-rf", str(CACHE)])
    emit(start_launcher("bf16", BASE_FLAGS))                            # cold
    ref = score_probe()
    emit({"kind": "drift", "config": "bf16-repeat", **drift(ref, score_probe())})
    loadgen(clock, "bf16", "rag", concurrency="8,32", est_s=40, extra=quick)
    loadgen(clock, "bf16", "long", est_s=25, extra=quick)
    stop_launcher()
    if clock.left() > 200:
        emit(start_launcher("fp8", ["--", "--quantization", "fp8"]))  # cold for this graph
        emit({"kind": "drift", "config": "fp8-vs-bf16", **drift(ref, score_probe())})
        loadgen(clock, "fp8", "rag", concurrency="8,32", est_s=40, extra=quick)
        loadgen(clock, "fp8", "long", est_s=25, extra=quick)
        stop_launcher()
    for config, env in (("bf16-inproc-engine", {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}),
                        ("bf16", {})):
        if clock.left() < 90:
            emit({"kind": "skipped", "config": config, "reason": "device-call budget"})
            continue
        os.environ.update(env)
        try:
            emit(start_launcher(config, BASE_FLAGS))                    # warm restart
            loadgen(clock, config, "seed", targets="shim", est_s=20, extra=quick)
        finally:
            for key in env:
                os.environ.pop(key)
            stop_launcher()


# --- start-up and determinism ----------------------------------------------------------------
STARTUP = WORK / "startup"  # one cache directory (or HOME) per configuration, so each has a cold start
# The launcher's start-up levers turned off, one by one where the timeline cannot tell them apart.
# Deterministic mode stays as the defaults have it, so that scores must be identical across all
# of these (the levers change how vLLM starts, never what it computes).
NO_LEVERS = ["--no-vllm-fork-engine", "--cache-dir", "", "--", "--model-impl", "auto"]
STARTUP_CONFIGS = {
    # name: (launcher flags, environment; a None value removes the variable)
    "levers": ([], {}),                               # the launcher's defaults
    "baseline": (NO_LEVERS, {"VLLM_ENABLE_STARTUP_PLAN": "0"}),
    "levers-no-plan": ([], {"VLLM_ENABLE_STARTUP_PLAN": "0"}),
    "baseline+fork": (["--cache-dir", "", "--", "--model-impl", "auto"], {"VLLM_ENABLE_STARTUP_PLAN": "0"}),
}
CACHE_VARS = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "XDG_CACHE_HOME")


def startup_env(config: str, fresh: bool) -> dict:
    """Where `config` keeps its caches: <STARTUP>/<cache group>/ (RERANKER_CACHE_DIR), or, with
    --cache-dir "" (vLLM's own defaults: ~/.cache/vllm, /tmp/torchinductor_*, ~/.triton), a HOME
    and TMPDIR of its own. `fresh` empties it first (a cold start)."""
    flags, extra = STARTUP_CONFIGS[config]
    group = "baseline" if "--cache-dir" in flags else "levers"  # the plan does not change the cache
    home = STARTUP / group
    if fresh:
        subprocess.run(["rm", "-rf", str(home)])
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env = {k: None for k in CACHE_VARS}
    env.update({k: None for k in os.environ if k.startswith("RERANKER_")})  # run.sh's RERANKER_CACHE_DIR
    if group == "baseline":
        env.update({"HOME": str(home), "TMPDIR": str(home / "tmp")})
    else:
        env["RERANKER_CACHE_DIR"] = str(home / "cache")
    env.update(extra)
    return env


def fixed_probe() -> list[list[float]]:
    try:
        return score_probe()
    except httpx.HTTPError as exc:
        emit({"kind": "error", "step": "score probe", "error": repr(exc)[:500]})
        return []


def timed_start(clock: Clock, config: str, cold: bool, reference: list, est_s: float) -> list:
    """One start of `config` to /ready (timeline included), its scores against the reference
    (the levers must not change them), then stop. Returns the scores."""
    if clock.left() < est_s:
        emit({"kind": "skipped", "step": "startup", "config": config, "start": "cold" if cold else "warm",
              "reason": f"device-call budget: {clock.left():.0f} s left, step needs ~{est_s:.0f} s"})
        return []
    flags, _ = STARTUP_CONFIGS[config]
    stop_launcher()
    try:
        line = start_launcher(config, flags, budget=min(est_s * 2.5, 300),
                              env=startup_env(config, fresh=cold), cold=cold)
    except RuntimeError as exc:
        emit({"kind": "error", "step": "startup", "config": config, "error": str(exc)[:3000]})
        stop_launcher()
        return []
    line["kind"] = "startup"
    scores = fixed_probe()
    if reference and scores:
        line["scores_vs_first"] = drift(reference, scores)
    emit(line)
    return scores


def phase_startup(clock: Clock, configs: list[str]) -> None:
    """Cold (empty caches) and warm (caches present) starts to /ready, each with the launcher's
    timeline of vLLM's phases, for the launcher's defaults and for the levers turned off. The
    most important first, so a cut-off call still has them. Leaves `levers` running (warm) for
    the determinism phase."""
    plan = [("levers", True, 90), ("levers", False, 45), ("baseline", True, 150),
            ("baseline", False, 110), ("baseline+fork", False, 90), ("levers-no-plan", False, 45),
            ("levers", False, 45)]
    reference: list = []
    for config, cold, est_s in plan:
        if config not in configs:
            continue
        scores = timed_start(clock, config, cold, reference, est_s)
        reference = reference or scores
    if launcher_running() is None:
        stop_launcher()


def det_probe(clock: Clock, config: str, est_s: float = 40, url: str = SHIM) -> None:
    from benchmarks.determinism import probe

    if clock.left() < est_s:
        emit({"kind": "skipped", "step": "determinism probe", "config": config, "reason": "budget"})
        return
    try:
        emit({**probe(url, NAME, pairs=64, concurrency=32), "config": config})
    except httpx.HTTPError as exc:
        emit({"kind": "error", "step": "determinism probe", "config": config, "error": repr(exc)[:500]})


def phase_determinism(clock: Clock) -> None:
    """The same 64 pairs alone, as one batch of 64 and among c=32 other traffic, exactly compared
    (max |drift|), then rag c=32 and seed throughput through the shim: deterministic mode (the
    default) and --no-deterministic, same launcher otherwise, caches warm (modelinfos, and the
    compile cache for the default; --no-deterministic compiles its own graph on first start)."""
    quick = ["--max-seconds", "12"]
    for config, flags in (("deterministic", []), ("non-deterministic", ["--no-deterministic"])):
        if clock.left() < 60:
            emit({"kind": "skipped", "step": "determinism", "config": config, "reason": "budget"})
            continue
        state = launcher_running()
        env = startup_env("levers", fresh=False)
        if not (state and state["config"] == "levers" and not flags):
            stop_launcher()
            try:
                line = start_launcher(config, flags, budget=min(150, clock.left() - 20), env=env,
                                      cold=False)
                emit({**line, "kind": "startup", "step": "determinism"})
            except RuntimeError as exc:
                emit({"kind": "error", "step": "determinism", "config": config, "error": str(exc)[:3000]})
                stop_launcher()
                continue
        det_probe(clock, config)
        loadgen(clock, config, "rag", targets="shim", concurrency="32", est_s=25, extra=quick)
        loadgen(clock, config, "seed", targets="shim", est_s=25, extra=quick)
    stop_launcher()


# --- several GPUs in one pod -------------------------------------------------------------------
MULTIGPU_NS = (1, 2, 4, 8)
MULTIGPU_MODES = ("engines", "data-parallel")
# Seconds one step needs at most: a launcher start (N engines load at once; warm compile cache)
# and rag, seed, long, mixed. A step that would not fit what is left of the call is skipped.
MULTIGPU_STEP_S = 240


def gpu_count() -> int:
    """GPUs on this box (nvidia-smi -L); BENCH_GPUS overrides (a CPU dry run: BENCH_GPUS=2)."""
    if os.environ.get("BENCH_GPUS"):
        return int(os.environ["BENCH_GPUS"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def multigpu_plan(gpus: int, ns: list[int], modes: list[str]) -> list[tuple[str, int]]:
    """(mode, N) steps, most important first: N=1 (the reference; both modes are the same single
    vLLM there), then each N for the engines mode before data-parallel, so a budget that runs
    out still leaves the primary path measured at every N."""
    plan = []
    for n in ns:
        if n > gpus:
            continue
        for mode in modes:
            if n == 1 and plan and plan[0][1] == 1:
                continue
            plan.append(("engines" if n == 1 else mode, n))
    return plan


def multigpu_done() -> set[tuple[str, int]]:
    """Steps already measured on this machine (results.jsonl survives while it stays warm), so
    the same call repeated does the next steps."""
    done = set()
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            if '"multigpu_step"' in line:
                rec = json.loads(line)
                if rec.get("status") == "done":
                    done.add((rec["mode"], rec["n"]))
    return done


def wait_all_engines(n: int, budget: float) -> float:
    """The shim is ready once one engine is; measure only when all n are up and verified."""
    started = time.monotonic()
    while time.monotonic() - started < budget:
        try:
            body = httpx.get(SHIM + "/ready", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            body = {}
        engines = body.get("engines")
        if body.get("status") == "ready" and (engines is None or (
                len(engines) == n and all(e["up"] and e["verified"] for e in engines))):
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"not all {n} engines verified after {budget:.0f} s: {ready_reason()}")


def engine_calls() -> dict[str, float]:
    """Calls the shim sent to each engine so far (reranker_engine_instance_calls_total)."""
    from benchmarks.loadgen import metric_samples

    try:
        samples = metric_samples(SHIM)
    except httpx.HTTPError:
        return {}
    return {labels["engine"]: value for name, labels, value in samples
            if name == "reranker_engine_instance_calls_total"}


def phase_multigpu(clock: Clock, ns: list[int], modes: list[str], fresh: bool) -> None:
    """Issue 16: N = 1, 2, 4, 8 GPUs (those this box has) in one pod, as N engines behind the
    shim (least outstanding tokens) and as one data-parallel vLLM: rag at c=32*N, seed with hey
    (c=50*N), long at c=8*N, mixed (small c=10 while long runs at c=8*N); throughput per GPU
    against N=1. Steps already done on this machine are skipped, so the same call repeated
    measures the rest; a summary of everything measured so far ends each call."""
    gpus = gpu_count()
    plan = multigpu_plan(gpus, ns, modes)
    if not plan:
        emit({"kind": "skipped", "step": "multigpu", "reason": f"{gpus} GPUs visible"})
        return
    done = set() if fresh else multigpu_done()
    for mode, n in plan:
        config = f"{mode}-n{n}"
        if (mode, n) in done:
            log(f"{config}: measured earlier on this machine")
            continue
        if clock.left() < MULTIGPU_STEP_S:
            emit({"kind": "skipped", "step": "multigpu", "config": config, "mode": mode, "n": n,
                  "reason": f"device-call budget: {clock.left():.0f} s left, a step needs "
                            f"~{MULTIGPU_STEP_S} s; run the phase again"})
            continue
        multigpu_step(clock, mode, n)
    stop_launcher()
    multigpu_summary()


def multigpu_step(clock: Clock, mode: str, n: int) -> None:
    config = f"{mode}-n{n}"
    flags = ["--engines", str(n), "--multi-gpu-mode", mode]
    stop_launcher()
    try:
        ready = start_launcher(config, flags, budget=min(300, clock.left() - 60))
        ready["all_engines_s"] = round(ready["seconds_to_ready"] + wait_all_engines(n, 120), 1)
        emit({**ready, "mode": mode, "n": n})
    except RuntimeError as exc:
        emit({"kind": "error", "step": "multigpu", "config": config, "error": str(exc)[:3000]})
        emit({"kind": "multigpu_step", "mode": mode, "n": n, "status": "failed to start"})
        stop_launcher()
        return
    quick = ["--max-seconds", "20", "--meta", f"mode={mode}", "--meta", f"n={n}"]
    procs = ["--procs", str(min(4, n))]
    before = engine_calls()
    loadgen(clock, config, "rag", targets="shim", concurrency=str(32 * n), requests=400 * n,
            est_s=30, extra=quick + procs)
    hey(config, "shim", SHIM + "/v1/rank", SEED_BODY, n=HEY_N * n, c=min(50 * n, 400))
    loadgen(clock, config, "long", targets="shim", concurrency=str(8 * n), requests=100 * n,
            est_s=30, extra=quick)
    loadgen(clock, config, "mixed", targets="shim", est_s=50,
            extra=quick + ["--mixed-long-concurrency", str(8 * n)])
    after = engine_calls()
    spread = {e: after[e] - before.get(e, 0) for e in after}
    emit({"kind": "multigpu_step", "mode": mode, "n": n, "status": "done",
          "engine_calls": spread,  # engines mode: how evenly the shim spread the calls
          "seconds_left": round(clock.left())})


def multigpu_summary() -> None:
    """Throughput per GPU at each N against N=1, from every multigpu line on this machine.
    Targets: rag and long >= 0.9 x N x the one-GPU figure; seed scales until the
    front end saturates (reported, not judged)."""
    if not RESULTS.exists():
        return
    figures: dict[tuple[str, int, str], float] = {}
    for line in RESULTS.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("phase") != "multigpu" or not str(rec.get("config", "")).count("-n"):
            continue
        mode, _, n = rec["config"].rpartition("-n")
        key = (mode, int(n))
        if rec.get("kind") == "result" and rec.get("target") == "shim" and not rec.get("errors"):
            figures[(*key, rec["workload"])] = rec["pairs_s"]
        elif rec.get("kind") == "hey" and not rec.get("errors"):
            figures[(*key, "seed")] = rec["req_s"]
        elif rec.get("kind") == "mixed" and not rec.get("errors"):
            figures[(*key, "mixed")] = rec["long_pairs_s"]
            figures[(*key, "mixed_small_p95_ms")] = rec["small_p95_ms"]
    units = {"rag": "pairs/s", "long": "pairs/s", "seed": "req/s", "mixed": "long pairs/s"}
    for (mode, n, workload), value in sorted(figures.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        if workload not in units:
            continue
        one = figures.get(("engines", 1, workload))
        per_gpu = value / n
        line = {"kind": "multigpu", "workload": workload, "mode": mode, "n": n,
                "throughput": value, "unit": units[workload], "per_gpu": round(per_gpu, 1),
                "per_gpu_vs_n1": round(per_gpu / one, 3) if one else None}
        if workload == "mixed":
            line["small_p95_ms"] = figures.get((mode, n, "mixed_small_p95_ms"))
        if workload in ("rag", "long") and one:
            line["target"] = 0.9
            line["meets_target"] = per_gpu / one >= 0.9
        emit(line)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["baseline", "levers", "custom", "fp8", "batching", "front",
                                     "mix", "startup", "determinism", "multigpu", "fill", "stop"])
    p.add_argument("--variants", default="engine_max_calls=2,engine_max_calls=4,workers=8,workers=2",
                   help="`front`: shim settings tried one at a time, in front of the same engine "
                   "(a=1+b=2: several in one shim)")
    p.add_argument("--mix-variants", default="",
                   help="`mix`: shim settings tried one at a time on mixed, e.g. "
                   "bulk_split_to_budget=false,engine_token_budget=24576 (a=1+b=2: several in one shim)")
    p.add_argument("--variant-steps", default="mixed,det,rag",
                   help="`mix`: what each variant runs beyond mixed (det, rag)")
    p.add_argument("--budgets", default="32768,98304", help="engine token budgets for `batching`")
    p.add_argument("--budget", type=float, default=540, help="seconds this call may take")
    p.add_argument("--config", default="custom")
    p.add_argument("--flags", default="", help="launcher flags for `custom`")
    p.add_argument("--workloads", default="seed,rag,long")
    p.add_argument("--targets", default="shim,vllm")
    p.add_argument("--concurrency", default="")
    p.add_argument("--ns", default=",".join(map(str, MULTIGPU_NS)),
                   help="multigpu: GPU counts to measure (those above the box's are left out)")
    p.add_argument("--modes", default=",".join(MULTIGPU_MODES), help="multigpu: engines,data-parallel")
    p.add_argument("--fresh", action="store_true", help="multigpu: measure steps done earlier again")
    p.add_argument("--configs", default=",".join(STARTUP_CONFIGS),
                   help=f"startup: which of {','.join(STARTUP_CONFIGS)}")
    p.add_argument("--fill-configs", default="n1,n2,n4,n4+mps",
                   help="fill: engine configurations, n<K>[+mps][+sync][+eager] (benchmarks/gpu/fill.py)")
    p.add_argument("--fill-steps", default="seed,small,rag", help="fill: steps per configuration")
    p.add_argument("--fill-raw", default="n1", help="fill: configurations also measured on raw vLLM")
    p.add_argument("--fill-profile-starts", action="store_true",
                   help="fill: py-spy dumps of vLLM once a second while each configuration starts")
    args = p.parse_args(argv)
    clock = Clock(args.budget)
    global CLOCK
    CLOCK = clock
    WORK.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    gpu = gpu_name()
    os.environ["BENCH_GPU"] = gpu
    COMMON.update({"phase": args.phase, "gpu": gpu, "versions": versions()})
    try:
        if args.phase == "baseline":
            phase_baseline(clock)
        elif args.phase == "levers":
            phase_levers(clock)
        elif args.phase == "fp8":
            phase_fp8(clock)
        elif args.phase == "batching":
            phase_batching(clock, [int(b) for b in args.budgets.split(",") if b])
        elif args.phase == "front":
            phase_front(clock, [v for v in args.variants.split(",") if v])
        elif args.phase == "mix":
            phase_mix(clock, shlex.split(args.flags), [int(b) for b in args.budgets.split(",") if b],
                      args.targets, [v for v in args.mix_variants.split(",") if v],
                      args.variant_steps)
        elif args.phase == "startup":
            phase_startup(clock, args.configs.split(","))
        elif args.phase == "determinism":
            phase_determinism(clock)
        elif args.phase == "multigpu":
            phase_multigpu(clock, [int(n) for n in args.ns.split(",") if n],
                           [m for m in args.modes.split(",") if m], args.fresh)
        elif args.phase == "fill":
            from benchmarks.gpu.fill import phase_fill

            phase_fill(clock, [c for c in args.fill_configs.split(",") if c],
                       [s for s in args.fill_steps.split(",") if s], args.fill_raw.split(","),
                       args.fill_profile_starts)
        elif args.phase == "custom":
            phase_custom(clock, args.config, shlex.split(args.flags), args.workloads, args.targets,
                         args.concurrency)
        else:
            stop_launcher()
    except Exception as exc:  # noqa: BLE001 - report, keep what was measured
        emit({"kind": "error", "phase": args.phase, "error": f"{type(exc).__name__}: {exc}"[:3000]})
        return 1
    log(f"phase {args.phase} done, {clock.left():.0f} s of budget left")
    return 0


if __name__ == "__main__":
    # run the module's imported copy: phases in other modules (benchmarks/gpu/fill.py) import it
    # by name, and must share its state (COMMON, CLOCK), not a second copy's
    from benchmarks.gpu import orchestrate

    sys.exit(orchestrate.main())
