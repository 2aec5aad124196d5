"""What the launcher knows about a checkpoint: its config.json (local directory or the Hugging Face
Hub), whether it is a Qwen3 reranker, and whether the shim's tokenizer is there. One place for these
facts, used by the start-up checks (launcher/preflight.py) and the vLLM argv (launcher/vllm_args.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from server.scoring.family import QWEN3_ARCHITECTURES, QWEN3_VL_ARCHITECTURES, family_of  # noqa: F401


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
    """The checkpoint's architectures, when it is a Qwen3 or Qwen3-VL model (family_of);
    ConfigError otherwise."""
    architectures = list(config.get("architectures") or [])
    if family_of(config) is not None:
        return architectures
    raise ConfigError(f"{model} is not a Qwen3 reranker checkpoint (model_type "
                      f"{config.get('model_type')!r}, architectures {architectures}): this service "
                      "serves Qwen3-Reranker models (Qwen/Qwen3-Reranker-0.6B, -4B, -8B, or their "
                      "seq-cls conversions) and Qwen3-VL-Reranker models (Qwen/Qwen3-VL-Reranker-2B, -8B)")


def read_architectures(model: str) -> list[str]:
    """Architectures from the checkpoint's config.json (local dir or Hub); a missing path, an
    unreachable hub or a checkpoint that is not a Qwen3 reranker raises ConfigError with one line
    that says what to do."""
    return check_qwen3_reranker(model, model_config(model))


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
