"""Checks before anything starts: the model and the ports. Each failure is one ConfigError whose
message says what happened and what to do; the CLI prints it as one line and exits 2, instead of
a library traceback minutes into a start (or a vLLM that loads for a minute, then cannot bind).
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

# Architectures a Qwen3 reranker checkpoint declares: the original (a causal LM scored on the
# "yes"/"no" logits) and its sequence-classification conversion.
QWEN3_ARCHITECTURES = {"Qwen3ForCausalLM", "Qwen3ForSequenceClassification"}


class ConfigError(Exception):
    """A configuration problem the operator has to fix; the message is the whole story."""


def looks_like_path(model: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else with a slash or a dot start is a path."""
    return (model.startswith(("/", "./", "../", "~")) or model.count("/") > 1
            or model.endswith("/") or model in (".", ".."))


def model_config(model: str) -> dict:
    """config.json of a local checkpoint directory or a hub model (downloaded into the HF cache,
    where vLLM finds it again)."""
    local = Path(model).expanduser()
    if local.is_dir():
        config = local / "config.json"
        if not config.is_file():
            raise ConfigError(f"model directory {model} has no config.json: point --model at a "
                              "Hugging Face checkpoint directory (config.json, tokenizer.json, weights)")
    elif local.exists():
        raise ConfigError(f"--model {model} is a file: point it at the checkpoint directory")
    elif looks_like_path(model):
        raise ConfigError(f"model path {model} does not exist: fix --model (RERANKER_MODEL), mount "
                          "the model there, or give a hub id such as Qwen/Qwen3-Reranker-0.6B")
    else:
        config = Path(_hub_file(model, "config.json"))
    try:
        return json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {config}: {exc}; the checkpoint looks damaged: "
                          "download it again") from None


def check_qwen3_reranker(model: str, config: dict) -> list[str]:
    """The checkpoint's architectures, when it is a Qwen3 model; ConfigError otherwise."""
    architectures = list(config.get("architectures") or [])
    model_type = config.get("model_type")
    if model_type in (None, "qwen3") and (QWEN3_ARCHITECTURES & set(architectures)
                                          or (model_type == "qwen3" and not architectures)):
        return architectures
    raise ConfigError(f"{model} is not a Qwen3 reranker checkpoint (model_type {model_type!r}, "
                      f"architectures {architectures}): this service serves Qwen3-Reranker models "
                      "(Qwen/Qwen3-Reranker-0.6B, -4B, -8B, or their seq-cls conversions)")


def check_tokenizer(source: str) -> None:
    """The shim tokenises itself and needs tokenizer.json (local, or fetched into the HF cache)."""
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "tokenizer.json").is_file():
            raise ConfigError(f"{source} has no tokenizer.json (the shim needs the fast tokenizer): "
                              "add it or pass --tokenizer with a directory or hub id that has one")
    elif looks_like_path(source) or local.exists():
        raise ConfigError(f"tokenizer path {source} does not exist or is not a directory: fix "
                          "--tokenizer / --model")
    else:
        _hub_file(source, "tokenizer.json")


def _hub_file(repo: str, filename: str) -> str:
    from huggingface_hub import errors as hf
    from huggingface_hub import hf_hub_download

    def kind(name: str) -> type[BaseException]:
        return getattr(hf, name, ConfigError)  # older huggingface_hub: names may be missing

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    cache = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    try:
        return hf_hub_download(repo, filename)
    except kind("LocalEntryNotFoundError"):
        if offline:
            raise ConfigError(f"model {repo} is not in the local Hugging Face cache ({cache}) and "
                              "HF_HUB_OFFLINE=1 forbids downloading it: download it first "
                              f"(`hf download {repo}`), or pass a local path with --model") from None
        raise ConfigError(f"cannot reach the Hugging Face Hub to fetch {repo} (no network or a "
                          f"proxy in the way) and it is not in the local cache ({cache}): check "
                          "network/HTTPS_PROXY, or download it elsewhere and pass a local path "
                          "with --model") from None
    except kind("GatedRepoError"):
        raise ConfigError(f"model {repo} is gated: accept its licence on huggingface.co and set "
                          "HF_TOKEN") from None
    except kind("RepositoryNotFoundError"):
        raise ConfigError(f"model {repo} does not exist on the Hugging Face Hub (or is private: "
                          "set HF_TOKEN): check the id, e.g. Qwen/Qwen3-Reranker-0.6B") from None
    except (kind("EntryNotFoundError"), kind("RemoteEntryNotFoundError")):
        raise ConfigError(f"model {repo} has no {filename}: not a Hugging Face checkpoint this "
                          "service can load") from None
    except kind("HFValidationError"):
        raise ConfigError(f"--model {repo!r} is neither an existing directory nor a valid hub id "
                          "(owner/name)") from None
    except kind("HfHubHTTPError") as exc:
        raise ConfigError(f"the Hugging Face Hub refused {repo}/{filename}: "
                          f"{str(exc).splitlines()[0]}") from None


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
    from launcher.gpu import gpu_visible, gpus_needed, visible_gpus

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
        architectures = check_qwen3_reranker(settings.model_path, model_config(settings.model_path))
    if settings.mode in ("all", "shim"):
        check_tokenizer(settings.tokenizer or settings.model_path)
    return architectures
