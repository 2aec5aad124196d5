"""Which reranker family a checkpoint is, read from its config.json: the text Qwen3-Reranker or
Qwen3-VL-Reranker (text and images). The launcher picks vLLM's flags and template by it, and the
shim its prompt and engine route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

Family = Literal["text", "vl"]

# Architectures a Qwen3 reranker checkpoint declares: the original (a causal LM scored on the
# "yes"/"no" logits) and its sequence-classification conversion.
QWEN3_ARCHITECTURES = frozenset({"Qwen3ForCausalLM", "Qwen3ForSequenceClassification"})
# Qwen3-VL-Reranker ships as a Qwen3-VL checkpoint (Qwen's reference code loads it with
# Qwen3VLForConditionalGeneration and reads the LM head's "yes"/"no" rows); vLLM serves it as
# Qwen3VLForSequenceClassification.
QWEN3_VL_ARCHITECTURES = frozenset({"Qwen3VLForConditionalGeneration",
                                    "Qwen3VLForSequenceClassification"})


def family_of(config: dict) -> Family | None:
    """"text" or "vl" for a Qwen3 / Qwen3-VL reranker checkpoint's config, else None."""
    architectures = set(config.get("architectures") or [])
    model_type = config.get("model_type")
    if model_type in (None, "qwen3") and (QWEN3_ARCHITECTURES & architectures
                                          or (model_type == "qwen3" and not architectures)):
        return "text"
    if model_type in (None, "qwen3_vl") and (QWEN3_VL_ARCHITECTURES & architectures
                                             or (model_type == "qwen3_vl" and not architectures)):
        return "vl"
    return None


def read_family(name_or_path: str) -> Family:
    """The family of a local checkpoint or hub model (the shim started on its own, without the
    launcher having resolved it); "text" when config.json cannot be read or names neither: the
    launcher refuses such checkpoints before anything starts."""
    local = Path(name_or_path)
    try:
        if local.is_dir():
            config = json.loads((local / "config.json").read_text())
        else:
            from huggingface_hub import hf_hub_download

            config = json.loads(Path(hf_hub_download(name_or_path, "config.json")).read_text())
    except Exception:  # noqa: BLE001 - unreadable config: the text model, as before families
        return "text"
    return family_of(config) or "text"
