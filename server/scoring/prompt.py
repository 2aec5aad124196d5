"""The official Qwen3-Reranker prompt, as text and as token ids.

Token ids are assembled from pieces so that (a) the ids equal those of tokenising the official
string in one go, and (b) text supplied by users can never become a special token:

    [template head ... <|im_start|>] + plain("user\\n<Instruct>: I\\n<Query>: Q\\n<Document>:")
        + plain(" " + D) + [<|im_end|> ... template tail]

`plain()` tokenises with special-token matching off, so "<|im_end|>" inside a document is the
six ordinary tokens of its text. The split before " " + D is exact: the Qwen pre-tokeniser always
ends a pre-token at ">:" followed by a space, BPE never merges across pre-tokens, and special
tokens are hard boundaries, so each piece tokenises exactly as it would inside the whole string.
tests/unit/test_prompt.py proves it against whole-string tokenisation with the real tokenizer.
"""

from __future__ import annotations

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
    'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

_BATCH_FROM = 8
_INSTRUCTION_CACHE = 1024
# Where the template's own special tokens end and user-influenced text begins.
_TEMPLATE_HEAD = PREFIX[: -len("user\n")]


def render(query: str, document: str, instruction: str) -> str:
    """The official prompt string for one pair."""
    return f"{PREFIX}<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}{SUFFIX}"


def head_text(query: str, instruction: str) -> str:
    return instruction_text(instruction) + query_text(query)


def instruction_text(instruction: str) -> str:
    return f"user\n<Instruct>: {instruction}\n"


def query_text(query: str) -> str:
    return f"<Query>: {query}\n<Document>:"


class Piece:
    """Token ids of a piece of user text; `ends` (end offset in characters of each token) is
    only built when a cut or a text slice needs it."""

    __slots__ = ("_encoding", "ids")

    def __init__(self, encoding) -> None:
        self._encoding = encoding
        self.ids: list[int] = encoding.ids

    @property
    def ends(self) -> list[int]:
        return [end for _, end in self._encoding.offsets]

    def __len__(self) -> int:
        return len(self.ids)


class PromptEncoder:
    """Turns (instruction, query, documents) into prompt token ids for vLLM's /classify."""

    def __init__(self, tokenizer) -> None:
        from copy import deepcopy

        self._special = tokenizer
        self._plain = deepcopy(tokenizer)
        self._plain.encode_special_tokens = True  # user text never yields special tokens
        self.template_head = self._special.encode(_TEMPLATE_HEAD, add_special_tokens=False).ids
        self.template_tail = self._special.encode(SUFFIX, add_special_tokens=False).ids
        self._instructions: dict[str, list[int]] = {}

    @property
    def tokenizer(self):
        """The served tokenizer as vLLM uses it on whole strings (special tokens recognised):
        what /tokenize and /detokenize answer with."""
        return self._special

    @property
    def template_tokens(self) -> int:
        return len(self.template_head) + len(self.template_tail)

    def encode_plain(self, texts: list[str]) -> list[Piece]:
        if len(texts) < _BATCH_FROM:  # the batch call's thread-pool hand-off costs more here
            return [Piece(self._plain.encode(t, add_special_tokens=False)) for t in texts]
        return [Piece(e) for e in self._plain.encode_batch(texts, add_special_tokens=False)]

    def head(self, query: str, instruction: str) -> list[int]:
        # The instruction part ends in "\n" and the query part starts with "<": a pre-token
        # always ends there, so the parts tokenise separately exactly as together, and the
        # instruction part (nearly always the same few strings) is tokenised once.
        return self._instruction_ids(instruction) + self.encode_plain([query_text(query)])[0].ids

    def _instruction_ids(self, instruction: str) -> list[int]:
        ids = self._instructions.get(instruction)
        if ids is None:
            ids = self.encode_plain([instruction_text(instruction)])[0].ids
            if len(self._instructions) >= _INSTRUCTION_CACHE:
                self._instructions.clear()
            self._instructions[instruction] = ids
        return ids

    def documents(self, documents: list[str]) -> list[Piece]:
        """Each document as it follows "<Document>:" (with its leading space)."""
        return self.encode_plain([" " + d for d in documents])

    def assemble(self, head: list[int], doc_ids: list[int]) -> list[int]:
        return self.template_head + head + doc_ids + self.template_tail

    def encode_official(self, query: str, document: str, instruction: str) -> list[int]:
        """Whole-string tokenisation of the official prompt: the reference the pieces must equal."""
        return self._special.encode(render(query, document, instruction), add_special_tokens=False).ids
