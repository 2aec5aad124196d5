"""How far a benchmark step is from the hardware's limit: GPU busy % and power (NVML, sampled every
200 ms) and the CPU % of each engine-core, vLLM API-server and shim process, over the step.

    with Utilisation() as u:
        ... run the load ...
    u.fields()  # {"gpu_busy_pct": 41.2, "gpu_power_w": 310.5, "engine_core_cpu_pct": [99.8, 97.1], ...}

NVML's utilisation is the share of the last sample period in which a kernel ran, the figure
`nvidia-smi` shows. Without NVML (a CPU dry run) the GPU fields are None."""

from __future__ import annotations

import os
import threading
import time

import psutil

SAMPLE_S = 0.2


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        return pynvml, handles
    except Exception:  # no NVML here: a CPU dry run
        return None, []


def _role(proc: psutil.Process, cmdline: str, name: str) -> str | None:
    """Which part of the stack a process is (vLLM sets its engine core's process title; the shim's
    workers are children of `python -m server`)."""
    if "EngineCor" in name or "EngineCore" in cmdline:
        return "engine_core"
    if "vllm.entrypoints" in cmdline:
        return "api_server"
    if "benchmarks.inproc_engine" in cmdline:  # vLLM's engine client in the benchmark's process
        return "inproc"
    if "-m server" in cmdline:
        return "shim"
    if "multiprocessing" in cmdline:
        parent = proc.parent()
        if parent is not None and "-m server" in " ".join(parent.cmdline()):
            return "shim"
    if "hey" in name or "benchmarks.loadgen" in cmdline:
        return "client"
    return None


def _family(roots: list[int]) -> list[psutil.Process]:
    """The benchmark's own processes: the roots and everything below them (other vLLMs on the
    machine are not counted)."""
    procs: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                procs[proc.pid] = proc
        except psutil.Error:
            continue
    return list(procs.values())


def _cpu_times(roots: list[int]) -> dict[int, tuple[str, float]]:
    out = {}
    for proc in _family(roots):
        try:
            role = _role(proc, " ".join(proc.cmdline()), proc.name())
            if role:
                t = proc.cpu_times()
                out[proc.pid] = (role, t.user + t.system)
        except psutil.Error:
            continue
    return out


def _rss_gib(roots: list[int]) -> dict[str, float]:
    """Resident memory of the service's processes by role, GiB (what a pod's memory limit must
    hold; a role's processes summed)."""
    out: dict[str, float] = {}
    for proc in _family(roots):
        try:
            role = _role(proc, " ".join(proc.cmdline()), proc.name())
            if role:
                out[role] = out.get(role, 0.0) + proc.memory_info().rss / 2**30
        except psutil.Error:
            continue
    return {role: round(gib, 2) for role, gib in out.items()}


def engine_cores(roots: list[int]) -> list[int]:
    """PIDs of the vLLM engine-core processes under `roots`."""
    out = []
    for proc in _family(roots):
        try:
            if _role(proc, " ".join(proc.cmdline()), proc.name()) == "engine_core":
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


class Utilisation:
    def __init__(self, roots: list[int] | None = None) -> None:
        """`roots`: the processes whose trees are measured (default: this one)."""
        self.roots = roots or [os.getpid()]
        self.samples: list[tuple[float, float]] = []  # (busy %, watts), all GPUs averaged
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _sample(self, nvml, handles) -> None:
        while not self._stop.wait(SAMPLE_S):
            try:
                busy = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
                watts = [nvml.nvmlDeviceGetPowerUsage(h) / 1000 for h in handles]
            except Exception:
                continue
            self.samples.append((sum(busy) / len(busy), sum(watts) / len(watts)))

    def __enter__(self) -> Utilisation:
        self.t0, self.before = time.monotonic(), _cpu_times(self.roots)
        nvml, handles = _nvml()
        self.gpus = len(handles)
        self.thread = None
        if handles:
            self.thread = threading.Thread(target=self._sample, args=(nvml, handles), daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(2)
        self.seconds = time.monotonic() - self.t0
        self.after = _cpu_times(self.roots)
        self.rss = _rss_gib(self.roots)

    def fields(self) -> dict:
        """The step's figures, to merge into each result line it produced."""
        per_role: dict[str, list[float]] = {}
        for pid, (role, cpu) in self.after.items():
            if pid in self.before and self.seconds > 0:
                per_role.setdefault(role, []).append(round(100 * (cpu - self.before[pid][1]) / self.seconds, 1))
        busy = [b for b, _ in self.samples]
        watts = [w for _, w in self.samples]
        return {
            "gpu_busy_pct": round(sum(busy) / len(busy), 1) if busy else None,
            "gpu_busy_p90_pct": round(sorted(busy)[int(0.9 * (len(busy) - 1))], 1) if busy else None,
            "gpu_power_w": round(sum(watts) / len(watts), 1) if watts else None,
            "gpus": self.gpus,
            "engine_core_cpu_pct": sorted(per_role.get("engine_core", []), reverse=True),
            "api_server_cpu_pct": sorted(per_role.get("api_server", []), reverse=True),
            "shim_cpu_pct": round(sum(per_role.get("shim", [])), 1),
            **({"inproc_cpu_pct": per_role["inproc"]} if "inproc" in per_role else {}),
            "rss_gib": self.rss,
            "util_seconds": round(self.seconds, 1),
        }
