"""Shared test fixtures: one real vLLM (CPU build) + shim per test session, started by the launcher.

The model is the offline tiny Qwen3 checkpoint (real Qwen3 tokenizer, random weights, fp32), so
scores can be compared with a transformers reference on the same weights.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "qwen3-reranker-tiny"
MODEL_NAME = "qwen3-reranker-tiny"
MAX_MODEL_LEN = 2048
STARTUP_BUDGET_S = 900
LOG_DIR = ROOT / ".cache" / "test-logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """The first of n consecutive free ports (a launcher's engines use vllm_port + i)."""
    while True:
        base = free_port()
        if base + n > 65535:
            continue
        try:
            with contextlib.ExitStack() as held:
                for i in range(1, n):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue


@dataclass
class Service:
    """A launcher process tree (vLLM + shim) started for tests."""

    url: str
    vllm_url: str
    proc: subprocess.Popen
    log_path: Path
    vllm_urls: list[str] = field(default_factory=list)  # every engine's (several engines)

    def post(self, path: str, body, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=120, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            # vLLM and the shim run in sessions of their own: remember them, so a launcher that is
            # killed (or fails to stop them) leaves nothing running after the test
            tree = descendants(self.proc.pid)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            kill_all(tree)
        return self.proc.returncode


def eventually(check, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """True once check() is; for what a server writes just after it answers (access logs)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def pytest_configure(config):
    # `timeout` (Makefile) ends a hung run with SIGTERM: turn it into KeyboardInterrupt so pytest
    # still tears fixtures down and the hook below runs
    signal.signal(signal.SIGTERM, _interrupt)
    if config.pluginmanager.hasplugin("xdist"):
        from tests import xdist_groups

        xdist_groups.configure(config)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if config.getoption("loadgroup", False):  # a pytest-xdist worker of `make test`
        from tests import xdist_groups

        xdist_groups.order_and_record(config, items)


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # before xdist's own choice of scheduler
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup`: the suite's own groups (tests/xdist_groups.py)."""
    if config.getoption("dist") == "loadgroup":
        from tests import xdist_groups

        return xdist_groups.GroupScheduling(config, log)
    return None


def pytest_unconfigure(config):
    if config.pluginmanager.hasplugin("xdist"):
        from tests import xdist_groups

        xdist_groups.unconfigure(config)


def pytest_sessionfinish(session, exitstatus):
    """Whatever a failed test left running must not outlive the run (and hold CI open)."""
    kill_all(descendants(os.getpid()))


def ensure_model() -> Path:
    from launcher.demo_model import build

    return build("tiny", MODEL_DIR)


def engine_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(overrides)
    return env


def start_launcher(name: str, *args: str, env: dict[str, str] | None = None,
                   wait_ready: bool = True, engines: int = 1) -> Service:
    """Start `python -m launcher` (mode all) on free ports with the tiny model; `engines` > 1:
    that many vLLMs (on consecutive ports) behind the shim."""
    ensure_model()
    port, vllm_port = free_port(), free_ports(engines)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    cmd = [sys.executable, "-m", "launcher", "--model", str(MODEL_DIR),
           "--served-model-name", MODEL_NAME, "--dtype", "float32",
           "--max-model-len", str(MAX_MODEL_LEN), "--port", str(port),
           "--vllm-port", str(vllm_port), "--host", "127.0.0.1", "--rate-limit", "",
           "--enforce-eager", *(["--engines", str(engines)] if engines > 1 else []), *args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or engine_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{vllm_port}", proc, log_path,
                      [f"http://127.0.0.1:{vllm_port + i}" for i in range(engines)])
    if wait_ready:
        wait_until_ready(service)
    return service


def wait_until_ready(service: Service, budget: float = STARTUP_BUDGET_S) -> None:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"launcher exited {service.proc.returncode}:\n{service.log()[-4000:]}")
        try:
            if httpx.get(service.url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    service.stop(signal.SIGKILL)
    raise RuntimeError(f"service not ready after {budget} s:\n{service.log()[-4000:]}")


def start_shim(vllm_url: str, port: int | None = None, defaults: bool = False,
               **settings: str) -> Service:
    """An extra shim process (mode shim) in front of an already running vLLM; `port`: a given one
    (a restart in place), else a free one. `defaults=True` leaves every user-facing setting at its
    default (only the wiring to the test vLLM is set)."""
    port = port or free_port()
    env = engine_env(RERANKER_MODE="shim", RERANKER_MODEL=str(MODEL_DIR),
                     RERANKER_SERVED_MODEL_NAME=MODEL_NAME, RERANKER_VLLM_URL=vllm_url,
                     RERANKER_HOST="127.0.0.1", RERANKER_PORT=str(port), RERANKER_RATE_LIMIT="",
                     RERANKER_MAX_MODEL_LEN=str(MAX_MODEL_LEN),
                     # test shims stop at once: the drain window (5 s by default) is for the drain
                     # tests to set (tests/integration/test_drain.py), not for every teardown to pay
                     RERANKER_DRAIN_WINDOW="0")
    if defaults:
        del env["RERANKER_RATE_LIMIT"], env["RERANKER_DRAIN_WINDOW"]
    env.update({f"RERANKER_{k.upper()}": v for k, v in settings.items()})
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"shim-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(f"http://127.0.0.1:{port}", vllm_url, proc, log_path)
    wait_until_ready(service, budget=60)
    return service


@pytest.fixture(scope="session")
def service():
    """The shared service: launcher (mode all) with real vLLM, started once per session. No drain
    window: nothing is sent to it at the end of the session (the drain tests start their own)."""
    svc = start_launcher("shared", "--drain-window", "0")
    yield svc
    svc.stop()


@pytest.fixture
def extra_shim(service):
    """Factory for extra shim processes against the shared vLLM; stopped after the test."""
    started: list[Service] = []

    def make(port: int | None = None, defaults: bool = False, **settings: str) -> Service:
        shim = start_shim(service.vllm_url, port, defaults=defaults, **settings)
        started.append(shim)
        return shim

    yield make
    for shim in started:
        shim.stop(timeout=30)


class Reference:
    """The official Qwen3-Reranker scoring, computed directly with transformers."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")

    def ids(self, query: str, doc: str, instruction: str | None = None, plain_user_text=False):
        from server.scoring.prompt import render
        from server.settings import DEFAULT_INSTRUCTION

        text = render(query, doc, instruction or DEFAULT_INSTRUCTION)
        if not plain_user_text:
            return self.tokenizer(text)["input_ids"]
        # user text tokenised as plain text: only the template's own markers are special
        # (every added token, <think> included, is split as ordinary text inside user text)
        from tokenizers import Tokenizer

        from server.scoring.prompt import PREFIX, SUFFIX

        plain = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        plain.encode_special_tokens = True
        body = text[len(PREFIX) - len("user\n"): len(text) - len(SUFFIX)]
        head = self.tokenizer(PREFIX[: -len("user\n")])["input_ids"]
        mid = plain.encode(body, add_special_tokens=False).ids
        return head + mid + self.tokenizer(SUFFIX)["input_ids"]

    def score_ids(self, ids: list[int]) -> float:
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor([ids])).logits[0, -1]
        pair = self.torch.stack([logits[self.no], logits[self.yes]])
        return self.torch.softmax(pair, dim=0)[1].item()

    def score(self, query: str, doc: str, instruction: str | None = None, **kw) -> float:
        return self.score_ids(self.ids(query, doc, instruction, **kw))


@pytest.fixture(scope="session")
def reference() -> Reference:
    return Reference(ensure_model())


@pytest.fixture(scope="session")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(ensure_model() / "tokenizer.json"))
