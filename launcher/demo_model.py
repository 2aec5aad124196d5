"""Build an offline Qwen3-family reranker checkpoint: the real Qwen3 tokenizer + random weights.

The tokenizer is rebuilt from the BPE ranks that the `dashscope` package ships
(`dashscope/resources/qwen.tiktoken`), so token ids match Qwen3's exactly (yes=9693, no=2152).
Shapes:
  tiny  - 2 layers, hidden 128, head_dim 64: runs the whole stack on 2 CPU cores in tests/demo.
  0.6b, 4b, 8b - the exact Qwen3-Reranker-0.6B / -4B / -8B shapes (8B: untied LM head): cost what
          the real models cost (benchmarks); 4b and 8b are initialised on a GPU when there is one.

Random weights are scaled so that scores spread over (0, 1) and depend on the text: with a
default init every document would score ~0.5 and a parity test would prove nothing.

    python -m launcher.demo_model --shape tiny --out models/qwen3-reranker-tiny

Qwen3-VL-Reranker shapes (a Qwen3-VL checkpoint as Qwen ships the reranker: architecture
Qwen3VLForConditionalGeneration, scored on the "yes"/"no" logits; the image processor and video
processor configs Qwen3-VL uses, and a chat template for the VL prompt):
  vl-tiny - 2 text layers (hidden 128, head_dim 64), a 2-block vision tower (hidden 128): serves
          text and images on 2 CPU cores in tests/demo.
  vl-2b, vl-8b - the exact Qwen3-VL-Reranker-2B / -8B shapes, for benchmarks.

    python -m launcher.demo_model --shape vl-tiny --out models/qwen3-vl-reranker-tiny
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DASHSCOPE_VERSION = "2.0.2"
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3's added tokens, in id order from 151643.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]
# Tokens that are "special" (skipped on decode) in Qwen3's tokenizer_config; the others are
# plain added tokens such as <think>.
NON_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}
FIRST_SPECIAL_ID = 151643
VOCAB_SIZE = 151669

SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=64),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128,
               tie_word_embeddings=False),
}

# Qwen3-VL-Reranker shapes: (text model, vision tower). The text model's M-RoPE splits the
# rotary half-dimension into (temporal, height, width) sections, interleaved as in Qwen3-VL.
VL_SHAPES = {
    "vl-tiny": (
        dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=64, tie_word_embeddings=True),
        dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2,
             deepstack_visual_indexes=[0]),
    ),
    "vl-2b": (
        dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
             num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
        dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
             deepstack_visual_indexes=[5, 11, 17]),
    ),
    "vl-8b": (
        dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
             num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
        dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
             deepstack_visual_indexes=[8, 16, 24]),
    ),
}
VL_VOCAB_SIZE = 151936  # Qwen3-VL pads its embedding table past the tokenizer's 151,669 ids
# Qwen3-VL's image processor (preprocessor_config.json) and video processor: 16-pixel patches,
# 2x2 patches merged into one token (so 32x32 pixels per token), mean/std 0.5, images resized
# to between 256x256 and 4096x4096 pixels' worth of area.
VL_IMAGE_PROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessorFast",
    "processor_class": "Qwen3VLProcessor",
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,
}
VL_VIDEO_PROCESSOR = {
    "video_processor_type": "Qwen3VLVideoProcessor",
    "processor_class": "Qwen3VLProcessor",
    "size": {"shortest_edge": 4096, "longest_edge": 25165824},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "fps": 2,
    "do_sample_frames": True,
}


def qwen_tiktoken_file(cache_dir: Path) -> Path:
    """Return the path of qwen.tiktoken, fetching the dashscope wheel (no deps) when needed."""
    target = cache_dir / "qwen.tiktoken"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
             f"dashscope=={DASHSCOPE_VERSION}"],
            check=True,
        )
        wheel = glob.glob(os.path.join(tmp, "dashscope-*.whl"))[0]
        with zipfile.ZipFile(wheel) as zf:
            target.write_bytes(zf.read("dashscope/resources/qwen.tiktoken"))
    return target


def build_tokenizer(tiktoken_file: Path):
    """A fast tokenizer equal to Qwen3's tokenizer.json (NFC, Qwen split regex, byte-level BPE)."""
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(tiktoken_file), pattern=QWEN_PATTERN).tokenizer()
    tok.model.ignore_merges = False  # as in Qwen3's tokenizer.json
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([
        AddedToken(t, special=t not in NON_SPECIAL, normalized=False) for t in SPECIAL_TOKENS
    ])
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == FIRST_SPECIAL_ID + i, t
    assert tok.token_to_id("yes") == 9693 and tok.token_to_id("no") == 2152
    return tok


def write_tokenizer(tok, out: Path) -> None:
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(FIRST_SPECIAL_ID + i): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": t not in NON_SPECIAL,
        }
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 131072,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_model(out: Path, shape: str, seed: int, tok) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    dims = {"tie_word_embeddings": True, **SHAPES[shape]}
    config = Qwen3Config(
        vocab_size=VOCAB_SIZE, max_position_embeddings=40960, rope_theta=1000000.0,
        rms_norm_eps=1e-6, bos_token_id=FIRST_SPECIAL_ID,
        eos_token_id=FIRST_SPECIAL_ID + 2, architectures=["Qwen3ForCausalLM"], **dims,
    )
    torch.manual_seed(seed)
    # the 4B/8B shapes take minutes to initialise on a CPU; on a GPU seconds (same recipe)
    device = "cuda" if shape in ("4b", "8b") and torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen3ForCausalLM(config).eval()
    _spread_scores(model.model, model.get_output_embeddings().weight, dims["num_hidden_layers"])
    _calibrate(model.model, model.get_output_embeddings().weight, tok, _text_calibration_prompts())
    dtype = torch.float32 if shape == "tiny" else torch.bfloat16
    model.to(dtype).save_pretrained(str(out), safe_serialization=True)


def _spread_scores(decoder, head, layers: int) -> None:
    """Make a random model's yes/no margin large and text-dependent.

    A default init leaves the last hidden state dominated by the last token's own embedding
    (always the template's final "\\n\\n"), so every document would score the same. Larger
    attention/MLP output weights let the context move the last state, and larger yes/no rows
    turn that movement into a margin of several logits.
    """
    import torch

    with torch.no_grad():
        for layer in decoder.layers:
            layer.self_attn.o_proj.weight.mul_(8.0 / layers ** 0.5)
            layer.mlp.down_proj.weight.mul_(8.0 / layers ** 0.5)
            layer.self_attn.v_proj.weight.mul_(4.0)
        # `head` is the LM head's weight: the embeddings when tied (0.6B, 4B, VL 2B)
        for token_id in (9693, 2152):  # yes, no
            head[token_id].mul_(12.0)


CALIBRATION_PAIRS = [
    ("what is the capital of France", "The capital of France is Paris."),
    ("what is the capital of France", "Bananas are yellow and rich in potassium."),
    ("如何申请差旅报销", "财务系统操作指南"),
    ("如何申请差旅报销", "员工手册第3章"),
    ("python list sort", "Use sorted(xs) or xs.sort() to sort a list in place."),
    ("weather tomorrow", "hello"),
    ("best pizza in Naples", "Pizza margherita was invented in Naples in 1889."),
    ("how do vaccines work", "The stock market closed higher on Friday."),
]


def _text_calibration_prompts() -> list[str]:
    from server.scoring.prompt import render
    from server.settings import DEFAULT_INSTRUCTION

    return [render(q, d, DEFAULT_INSTRUCTION) for q, d in CALIBRATION_PAIRS]


def _calibrate(decoder, emb, tok, prompts: list[str], target_std: float = 2.0) -> None:
    """Centre the yes-no margin on 0 and give it a spread of ~target_std logits over the
    calibration prompts (`decoder`: the text model; `emb`: the LM head's weight)."""
    import torch

    states = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok.encode(prompt).ids
            out = decoder(input_ids=torch.tensor([ids], device=emb.device))
            states.append(out.last_hidden_state[0, -1].float())
        h = torch.stack(states)
        diff = (emb[9693] - emb[2152]).float()
        margins = h @ diff
        scale = target_std / margins.std().clamp_min(1e-6)
        h_mean = h.mean(0)
        new_diff = diff * scale - (margins.mean() * scale) * h_mean / h_mean.dot(h_mean)
        emb[9693].copy_((emb[2152].float() + new_diff).to(emb.dtype))


# The checkpoint's chat template (what transformers' processor renders a conversation with):
# Qwen3-VL's ChatML layout for system/user/assistant turns whose content is a string or a list of
# text, image and video parts (no tools). The reranker prompt is one system and one user turn.
VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content is string -%}{{- message.content -}}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part.type == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def write_vl_processor(out: Path) -> None:
    (out / "preprocessor_config.json").write_text(json.dumps(VL_IMAGE_PROCESSOR, indent=2))
    (out / "video_preprocessor_config.json").write_text(json.dumps(VL_VIDEO_PROCESSOR, indent=2))
    (out / "chat_template.jinja").write_text(VL_CHAT_TEMPLATE)


def write_vl_model(out: Path, shape: str, seed: int, tok) -> None:
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text, vision = VL_SHAPES[shape]
    text = dict(text)
    tie = text.pop("tie_word_embeddings")
    half = text["head_dim"] // 2  # M-RoPE sections (t, h, w) of the rotary half-dimension
    sections = [half * 3 // 8, half * 5 // 16, half - half * 3 // 8 - half * 5 // 16]
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=VL_VOCAB_SIZE, max_position_embeddings=262144, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                             "mrope_section": sections, "mrope_interleaved": True},
            bos_token_id=FIRST_SPECIAL_ID, eos_token_id=FIRST_SPECIAL_ID + 2,
            tie_word_embeddings=tie, **text),
        vision_config=dict(out_hidden_size=text["hidden_size"], patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=2304, **vision),
        tie_word_embeddings=tie, architectures=["Qwen3VLForConditionalGeneration"],
    )
    torch.manual_seed(seed)
    device = "cuda" if shape == "vl-8b" and torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config).eval()
    _spread_scores(model.model.language_model, model.get_output_embeddings().weight,
                   text["num_hidden_layers"])
    _calibrate(model.model.language_model, model.get_output_embeddings().weight, tok,
               _vl_calibration_prompts())
    dtype = torch.float32 if shape == "vl-tiny" else torch.bfloat16
    model.to(dtype).save_pretrained(str(out), safe_serialization=True)


def _vl_calibration_prompts() -> list[str]:
    from server.scoring.vl_prompt import DEFAULT_VL_INSTRUCTION, Part, render

    return [render(Part(q), Part(d), DEFAULT_VL_INSTRUCTION) for q, d in CALIBRATION_PAIRS]


def is_vl_shape(shape: str) -> bool:
    return shape in VL_SHAPES


def build(shape: str, out: Path, seed: int = 0, cache_dir: Path | None = None) -> Path:
    out = Path(out)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    cache_dir = cache_dir or Path(os.environ.get("RERANKER_CACHE_DIR", ".cache"))
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(qwen_tiktoken_file(cache_dir))
    write_tokenizer(tok, out)
    if is_vl_shape(shape):
        write_vl_processor(out)
        write_vl_model(out, shape, seed, tok)
    else:
        write_model(out, shape, seed, tok)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES) + sorted(VL_SHAPES), default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build(args.shape, args.out, args.seed))


if __name__ == "__main__":
    main()
