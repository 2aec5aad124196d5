"""Checks before anything starts: the ports, the GPUs and the model. Each failure is one ConfigError whose
message says what happened and what to do; the CLI prints it as one line and exits 2, instead of
a library traceback minutes into a start (or a vLLM that loads for a minute, then cannot bind).
"""

from __future__ import annotations

import errno
import importlib.util
import socket
import subprocess
import sys

from launcher.checkpoint import (
    ConfigError,
    check_qwen3_reranker,
    check_tokenizer,
    family_of,
    model_config,
)
from launcher.gpu import gpu_visible, gpus_needed, visible_gpus

__all__ = ["ConfigError", "check_gpus", "check_model", "check_port", "check_ports"]

def check_port(host: str, port: int, what: str, flag: str) -> None:
    """Bind and release (with SO_REUSEADDR, as uvicorn and vLLM bind): a port someone else holds
    is found now, not after a model load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} ({what}, {flag}) is already in use: stop "
                                  f"what holds it (another reranker? `ss -ltnp 'sport = :{port}'`) "
                                  f"or choose another port with {flag}") from None
            if exc.errno == errno.EACCES:
                raise ConfigError(f"no permission to listen on port {port} ({what}, {flag}): ports "
                                  "below 1024 need root or CAP_NET_BIND_SERVICE; choose a port "
                                  "above 1023") from None
            raise ConfigError(f"cannot listen on {host}:{port} ({what}, {flag}): {exc.strerror}; "
                              f"check the host setting") from None


def check_ports(settings) -> None:
    s = settings
    if s.mode in ("all", "shim"):
        check_port(s.host, s.port, "the API", "--port")
    if s.mode in ("all", "vllm"):
        ports = s.vllm_ports
        if s.mode == "all" and s.port in ports:
            what = "--vllm-port" if len(ports) == 1 else f"the engines' ports ({ports[0]}-{ports[-1]})"
            raise ConfigError(f"--port {s.port} is also {what}: the API and vLLM need "
                              "ports of their own")
        for i, port in enumerate(ports):
            what = "vLLM" if len(ports) == 1 else f"vLLM engine {i} (--vllm-port + {i})"
            check_port(s.vllm_host, port, what, "--vllm-port")


def check_gpus(settings, gpu: bool | None = None, env: dict | None = None) -> None:
    """Enough GPUs for engines x tensor_parallel_size, before N engines start loading and one of
    them fails minutes later (on a CPU the engines are only processes: nothing to check)."""
    if settings.mode not in ("all", "vllm") or not (gpu_visible() if gpu is None else gpu):
        return
    needed, have = gpus_needed(settings), visible_gpus(env)
    if needed > len(have):
        per_gpu = f" / --engines-per-gpu {settings.engines_per_gpu}" if settings.engines_per_gpu > 1 else ""
        raise ConfigError(f"--engines {settings.engines}{per_gpu} x --tensor-parallel-size "
                          f"{settings.tensor_parallel_size} needs {needed} GPUs, {len(have)} visible "
                          f"({', '.join(have) or 'none'}): lower --engines or give the pod more "
                          "GPUs (Helm gpu.count)")


def check_model(settings) -> list[str] | None:
    """The model and tokenizer a start needs; returns the checkpoint's architectures (None in
    shim mode, which runs no engine)."""
    architectures = None
    if settings.mode in ("all", "vllm"):
        config = model_config(settings.model_path)
        architectures = check_qwen3_reranker(settings.model_path, config)
        if family_of(config) == "vl" or settings.model_family == "vl":
            check_vision_stack(settings.model_path)
    if settings.mode in ("all", "shim"):
        check_tokenizer(settings.tokenizer or settings.model_path)
    return architectures


def check_vision_stack(model: str) -> None:
    """vLLM's Qwen3-VL model and transformers' Qwen3-VL processor import torchvision; without it
    vLLM only says, after a minute of loading, that the architecture "is not supported". PyPI's
    torchvision is a CUDA build that, beside the CPU torch, is installed but fails at import
    (scripts/setup.sh patches it: scripts/cpu_torchvision.py), so it is imported here, in a
    child process (a few seconds of importing torch the launcher itself does not need)."""
    if importlib.util.find_spec("torchvision") is None:
        raise ConfigError(f"{model} is a Qwen3-VL reranker, and serving it needs torchvision (vLLM's "
                          "Qwen3-VL model and its image processor import it), which is not "
                          "installed: install the torchvision release for this torch (on the CPU "
                          "build: scripts/setup.sh, docs/vl.md)")
    try:
        result = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True,
                                text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return  # a slow disk, not a broken package: let vLLM try
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ConfigError(f"{model} is a Qwen3-VL reranker, and serving it needs torchvision, which "
                          f"is installed but does not import ({lines[-1].strip() if lines else 'no message'}): "
                          "a build for another torch? On the CPU build, scripts/cpu_torchvision.py "
                          "makes PyPI's importable (docs/vl.md)")
