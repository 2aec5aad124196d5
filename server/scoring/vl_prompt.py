"""The official Qwen3-VL-Reranker prompt: one system turn and one user turn of Qwen3-VL's chat
format, scored on the last-token logits of "no" and "yes" (P(yes) = sigmoid(logit(yes) -
logit(no)), as for the text model).

How Qwen's reference code lays a pair out (its `format_mm_instruction`), as the rendered string:

    <|im_start|>system\\n{SYSTEM}<|im_end|>\\n<|im_start|>user\\n
    <Instruct>: {instruction}<Query>:{query part}\\n<Document>:{document part}<|im_end|>\\n
    <|im_start|>assistant\\n

(one line in reality). A part is its images first (each `<|vision_start|><|image_pad|>
<|vision_end|>`, which the image processor widens to one `<|image_pad|>` per 32x32 pixels), then
its text, with no separator; a part with neither is the text "NULL". There is no space after
"<Query>:" or "<Document>:", no newline after the instruction, and no `<think>` block (Qwen3-VL's
generation prompt is `<|im_start|>assistant\\n`): the text reranker's layout differs in all four.

The default instruction differs from the text model's too (the VL reference code's own).
"""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
          'provided. Note that the answer can only be "yes" or "no".')
PREFIX = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
DEFAULT_VL_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
EMPTY_PART = "NULL"
# One image token covers a 32x32-pixel square (16-pixel patches, 2x2 merged), and each image
# adds its <|vision_start|> and <|vision_end|> around them.
IMAGE_TOKEN_PIXELS = 32
IMAGE_WRAPPER_TOKENS = 2


@dataclass(frozen=True)
class Part:
    """A query or a document: its text and how many images come before it."""

    text: str = ""
    images: int = 0

    def render(self) -> str:
        if not self.text and not self.images:
            return EMPTY_PART
        return IMAGE_PLACEHOLDER * self.images + self.text


def head(instruction: str) -> str:
    """The prompt up to the query part."""
    return f"{PREFIX}<Instruct>: {instruction}<Query>:"


DOCUMENT_TAG = "\n<Document>:"


def render(query: Part, document: Part, instruction: str) -> str:
    """The official prompt string of one pair (images as their unexpanded placeholders)."""
    return f"{head(instruction)}{query.render()}{DOCUMENT_TAG}{document.render()}{SUFFIX}"
