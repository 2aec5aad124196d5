"""Qwen3-VL-Reranker without an engine: the prompt equals what Qwen's reference code renders,
vLLM's template (as the launcher ships it) renders the same bytes, images are resized by the
reference's rule, and the launcher picks the VL flags by the checkpoint (or refuses it in one
line)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from PIL import Image

from launcher import preflight
from launcher.checkpoint import ConfigError
from launcher.demo_model import VL_CHAT_TEMPLATE
from launcher.vllm_args import VL_TEMPLATE, build_vllm_command
from server.scoring.family import family_of
from server.scoring.vl_images import resized, smart_resize
from server.scoring.vl_prompt import DEFAULT_VL_INSTRUCTION, IMAGE_PLACEHOLDER, Part, render
from server.settings import Settings

SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
          'provided. Note that the answer can only be "yes" or "no".')


def reference_messages(query: dict, document: dict, instruction: str) -> list[dict]:
    """The conversation Qwen's reference builds for a pair (format_mm_instruction), written
    afresh: a system turn, and a user turn of "<Instruct>: ...", then "<Query>:" and
    "\\n<Document>:" each followed by the part's images, then its texts (or "NULL")."""
    def part(prefix: str, item: dict) -> list[dict]:
        images = item.get("images", [])
        texts = [item["text"]] if item.get("text") else []
        if not images and not texts:
            return [{"type": "text", "text": prefix}, {"type": "text", "text": "NULL"}]
        return ([{"type": "text", "text": prefix}] + [{"type": "image", "image": i} for i in images]
                + [{"type": "text", "text": t} for t in texts])
    user = ([{"type": "text", "text": "<Instruct>: " + instruction}] + part("<Query>:", query)
            + part("\n<Document>:", document))
    return [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": user}]


def chat(template: str, messages: list[dict], **kwargs) -> str:
    # as transformers (and vLLM) compile chat templates
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, **kwargs)


CASES = [
    ({"text": "a dog on a beach"}, {"text": "A golden retriever runs on the sand."}),
    ({"text": "a dog on a beach"}, {"images": ["img"]}),
    ({"text": "a dog on a beach"}, {"text": "the same, with a picture", "images": ["img", "img2"]}),
    ({"images": ["q"]}, {"text": "a caption"}),
    ({"text": "<|im_end|> in a query"}, {}),
]


@pytest.mark.parametrize("query,document", CASES)
def test_the_prompt_is_the_reference_conversation_rendered(query, document):
    ours = render(Part(query.get("text", ""), len(query.get("images", []))),
                  Part(document.get("text", ""), len(document.get("images", []))),
                  DEFAULT_VL_INSTRUCTION)
    theirs = chat(VL_CHAT_TEMPLATE, reference_messages(query, document, DEFAULT_VL_INSTRUCTION),
                  add_generation_prompt=True)
    assert ours == theirs
    assert ours.endswith("<|im_end|>\n<|im_start|>assistant\n") and "<think>" not in ours


@pytest.mark.parametrize("query,document", CASES)
def test_vllms_template_renders_the_same_prompt(query, document):
    """vLLM hands the template each part as one string: the images' placeholders, then the text."""
    def flattened(item: dict) -> str:
        return IMAGE_PLACEHOLDER * len(item.get("images", [])) + item.get("text", "")
    messages = [{"role": "query", "content": flattened(query)},
                {"role": "document", "content": flattened(document)}]
    ours = render(Part(query.get("text", ""), len(query.get("images", []))),
                  Part(document.get("text", ""), len(document.get("images", []))), "Find pictures")
    assert chat(VL_TEMPLATE.read_text(), messages, instruction="Find pictures") == ours
    default = chat(VL_TEMPLATE.read_text(), messages)
    assert f"<Instruct>: {DEFAULT_VL_INSTRUCTION}<Query>:" in default


@pytest.mark.parametrize("size,expected", [
    ((64, 64), (64, 64)),        # already on the grid, 4 tokens: kept
    ((30, 30), (64, 64)),        # under 4 tokens: scaled up (ceil) to the minimum
    ((1000, 2000), (928, 1888)),  # over 1,800 tokens: scaled down (floor) to fit
    ((100, 50), (96, 64)),       # Python's round: 100/32 = 3.125 -> 3, 50/32 = 1.5625 -> 2
])
def test_images_are_resized_by_the_reference_rule(size, expected):
    height, width = size
    assert smart_resize(height, width) == expected
    assert resized(Image.new("RGBA", (width, height), (255, 0, 0, 0))).size == expected[::-1]


def test_transparency_is_flattened_on_white():
    clear = resized(Image.new("RGBA", (64, 64), (255, 0, 0, 0)))
    assert clear.mode == "RGB" and clear.getpixel((0, 0)) == (255, 255, 255)


def vl_checkpoint(tmp_path: Path, architectures=("Qwen3VLForConditionalGeneration",)) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl",
                                                      "architectures": list(architectures)}))
    (tmp_path / "tokenizer.json").write_text("{}")
    return tmp_path


def test_family_from_the_config():
    assert family_of({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}) == "text"
    assert family_of({"model_type": "qwen3_vl", "architectures": ["Qwen3VLForConditionalGeneration"]}) == "vl"
    assert family_of({"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}) is None


def test_the_launcher_gives_vllm_the_vl_template_conversion_and_image_bounds(tmp_path):
    cmd = build_vllm_command(Settings(model=str(vl_checkpoint(tmp_path))), gpu=False)
    assert cmd[cmd.index("--chat-template") + 1] == str(VL_TEMPLATE)
    overrides = json.loads(cmd[cmd.index("--hf-overrides") + 1])
    assert overrides == {"architectures": ["Qwen3VLForSequenceClassification"],
                         "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": True}
    assert json.loads(cmd[cmd.index("--mm-processor-kwargs") + 1]) == {
        "size": {"shortest_edge": 4096, "longest_edge": 1843200}}
    assert json.loads(cmd[cmd.index("--limit-mm-per-prompt") + 1])["video"] == 0
    converted = build_vllm_command(Settings(model=str(vl_checkpoint(
        tmp_path, ["Qwen3VLForSequenceClassification"]))), gpu=False)
    assert "--hf-overrides" not in converted and str(VL_TEMPLATE) in converted


def test_start_up_refuses_other_checkpoints_and_a_vl_model_without_torchvision(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}))
    with pytest.raises(ConfigError, match="Qwen3-VL-Reranker"):
        preflight.check_model(Settings(model=str(other)))
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None)  # no torchvision
    with pytest.raises(ConfigError, match="torchvision") as refused:
        preflight.check_model(Settings(model=str(vl_checkpoint(tmp_path))))
    assert "\n" not in str(refused.value)


def test_start_up_refuses_a_torchvision_that_does_not_import_and_passes_the_installed_one(tmp_path, monkeypatch):
    preflight.check_vision_stack("the-model")  # the torchvision scripts/setup.sh installs imports
    # a stand-in package failing as PyPI's CUDA torchvision does beside the CPU torch
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ConfigError, match="installed but does not import .*nms does not exist") as refused:
        preflight.check_vision_stack("the-model")
    assert "\n" not in str(refused.value) and "cpu_torchvision.py" in str(refused.value)
