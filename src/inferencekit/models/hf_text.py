"""The text side of a generator that tokenises with a transformers tokenizer (the hf and vllm backends):
prompt ids with one BOS, the chat template (or a plain fallback), token counts and token text."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferencekit.models.base import Message

logger = logging.getLogger(__name__)


class TokenizerText:
    """Mixin: `encode`, `chat_prompt`, `count_tokens` and token text over `self.tokenizer`.

    The class using it sets `tokenizer`, `model_name`, `eos_token_ids` and `pad_token_id`, and calls
    `_setup_text(chat_template)` once the tokenizer is loaded.
    """

    tokenizer: Any
    model_name: str
    eos_token_ids: list[int]
    pad_token_id: int | None

    def _setup_text(self, chat_template: str | None) -> None:
        """Install a chat template given as text or a file path, and learn whether the tokenizer adds BOS."""
        tok = self.tokenizer
        if chat_template:
            path = Path(chat_template).expanduser()
            if len(chat_template) < 4096 and "{" not in chat_template and path.is_file():
                chat_template = path.read_text()
            tok.chat_template = chat_template
        probe = tok("a")["input_ids"]
        self._adds_bos = tok.bos_token_id is not None and len(probe) > 0 and probe[0] == tok.bos_token_id
        self._warned_no_template = False

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        if not self._warned_no_template:
            logger.warning("%s has no chat template; using a plain 'User: ... Assistant:' format", self.model_name)
            self._warned_no_template = True
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        if add_generation_prompt:
            lines.append("Assistant:")
        return "\n".join(lines)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` alone (no BOS added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt, with the tokenizer's BOS unless the text already starts with it."""
        bos = self.tokenizer.bos_token
        add_special = not (self._adds_bos and bos and prompt.startswith(bos))
        ids = list(self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"])
        if not ids:  # an empty prompt: condition on BOS (or EOS) rather than on nothing
            fallback = self.tokenizer.bos_token_id
            if fallback is None:
                fallback = self.eos_token_ids[0] if self.eos_token_ids else self.pad_token_id
            ids = [fallback]
        return ids

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _top_pairs(self, ids: list[int], values: list[float], k: int) -> list[tuple[str, float]]:
        """The first `k` (token text, log-probability) pairs; an end-of-sequence token's text is ""."""
        eos = set(self.eos_token_ids)
        return [("" if t in eos else self._decode([t]), v) for t, v in zip(ids[:k], values[:k], strict=True)]
