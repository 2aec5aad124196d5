"""What every GPU benchmark phase shares: the clock of the device call, the result lines, the
launcher (vLLM + shim) and extra shims, and the load tools (loadgen, hey, score probes).

A phase (benchmarks/gpu/phases/) is a sequence of steps built from these. Every figure is one JSON
line (`emit`) in $BENCH_WORK/results.jsonl (default /tmp/bench), on stdout and, during a device
call, in $OUT/results-live.jsonl (what a call cut off by its limit still returns); a load step
wrapped in `measured()` carries the GPU busy %, power and per-process CPU % of its span. The
launcher's and shims' logs go to $BENCH_WORK/logs. A launcher left running is remembered in
$BENCH_WORK/launcher.json, so the next phase (the next device call) can reuse it.

Local dry runs set the BENCH_* environment variables below (docs/gpu.md has the command lines).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
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


# --- the device call's clock and the result lines ----------------------------------------------
class Clock:
    """Seconds left of the phase's budget (the device call's limit, less what run.sh used)."""

    def __init__(self, budget: float) -> None:
        self.start = time.monotonic()
        self.budget = budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


CLOCK: Clock | None = None  # the running phase's clock (orchestrate.main sets it): caps every wait
COMMON: dict = {}           # fields of every result line: phase, GPU, package versions


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
        traceback.print_exc()
    try:
        yield
    finally:
        lines, _STEP_LINES = _STEP_LINES, None
        try:
            util.__exit__(None, None, None)
            extra = util.fields()
        except Exception as exc:  # noqa: BLE001 - the figures still count without it
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


def wait_all_engines(n: int | None, budget: float) -> tuple[float, int]:
    """The shim is ready once one engine is; measure only when all n are up and verified (n None:
    every engine the shim lists, however many the launcher chose). Returns the seconds waited and
    the engines seen (1 where /ready lists none)."""
    started = time.monotonic()
    while time.monotonic() - started < budget:
        try:
            body = httpx.get(SHIM + "/ready", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            body = {}
        engines = body.get("engines")
        if body.get("status") == "ready" and (engines is None or (
                (n is None or len(engines) == n) and all(e["up"] and e["verified"] for e in engines))):
            return time.monotonic() - started, len(engines or [None])
        time.sleep(0.5)
    raise RuntimeError(f"not all {n} engines verified after {budget:.0f} s: {ready_reason()}")


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


# --- scores ------------------------------------------------------------------------------------
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


def fixed_probe() -> list[list[float]]:
    try:
        return score_probe()
    except httpx.HTTPError as exc:
        emit({"kind": "error", "step": "score probe", "error": repr(exc)[:500]})
        return []


def det_probe(clock: Clock, config: str, est_s: float = 40, url: str = SHIM) -> None:
    from benchmarks.determinism import probe

    if clock.left() < est_s:
        emit({"kind": "skipped", "step": "determinism probe", "config": config, "reason": "budget"})
        return
    try:
        emit({**probe(url, NAME, pairs=64, concurrency=32), "config": config})
    except httpx.HTTPError as exc:
        emit({"kind": "error", "step": "determinism probe", "config": config, "error": repr(exc)[:500]})
