"""Load the model's fast tokenizer (tokenizer.json) from a local checkpoint or the Hub."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


def load_tokenizer(name_or_path: str) -> Tokenizer:
    local = Path(name_or_path)
    if local.is_dir():
        return Tokenizer.from_file(str(local / "tokenizer.json"))
    from huggingface_hub import hf_hub_download

    return Tokenizer.from_file(hf_hub_download(name_or_path, "tokenizer.json"))
