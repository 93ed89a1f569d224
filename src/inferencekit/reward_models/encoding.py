"""Turn (question, steps) into token ids and the positions where each step's score is read.

Formats describe their input as text pieces with `Marker`s in between. `encode_marked` tokenizes the
joined text in one go (as the reference code of those checkpoints does) and takes, for each marker,
the token that holds the marker's last character: its read-out position is kept only when that token's
id is one of the marker's ids, so markers are found by token id and never by where a string occurs.
"""

from __future__ import annotations

import warnings
from bisect import bisect_left
from collections.abc import Collection, Sequence
from dataclasses import dataclass

Span = tuple[int, int]

# Stands where a marker goes when a chat template renders a conversation: private-use characters that
# tokenizers and templates leave alone (a template's `trim` keeps inner text) and that solutions never hold.
SENTINEL = "\ue000\ue001MARK\ue001\ue000"


@dataclass
class Encoded:
    """Token ids of one input and, per step, the token positions [start, end) whose scores make its score.

    A step's span is None when it has no score (its marker was cut off or not found).
    """

    ids: list[int]
    spans: list[Span | None]

    def truncated_left(self, limit: int) -> Encoded:
        """Keep the last `limit` tokens; steps whose span starts before the cut lose their span."""
        cut = len(self.ids) - limit
        if cut <= 0:
            return self
        spans = [None if s is None or s[0] < cut else (s[0] - cut, s[1] - cut) for s in self.spans]
        return Encoded(self.ids[cut:], spans)


@dataclass(frozen=True)
class Marker:
    """Text a format inserts after a step; its token is where the step is scored."""

    text: str


def last_token_id(tokenizer, text: str, context: str = "a") -> int:
    """Id of the last token of `text` as it tokenizes after ordinary text."""
    return tokenizer(context + text, add_special_tokens=False)["input_ids"][-1]


def encode_marked(
    tokenizer,
    pieces: Sequence[str | Marker],
    marker_ids: Collection[int],
    *,
    add_special_tokens: bool,
    shift: int = 0,
) -> Encoded:
    """Tokenize the joined pieces; step i reads position (token of marker i) + `shift`.

    `shift=-1` reads the logits just before the marker (a model predicting the marker token).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("reward model formats that mark steps in text need a fast tokenizer (offsets)")
    text_parts: list[str] = []
    marker_ends: list[tuple[int, int]] = []
    length = 0
    for piece in pieces:
        part = piece.text if isinstance(piece, Marker) else piece
        text_parts.append(part)
        if isinstance(piece, Marker):
            marker_ends.append((length, length + len(part)))
        length += len(part)
    enc = tokenizer("".join(text_parts), add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    # tokens the tokenizer adds itself (BOS, EOS) have empty offsets and hold no text
    texty = [i for i, (start, end) in enumerate(offsets) if end > start]
    starts = [offsets[i][0] for i in texty]
    spans: list[Span | None] = []
    missing = 0
    for begin, end in marker_ends:
        k = bisect_left(starts, end) - 1  # last token starting before the marker's end
        j = texty[k] if k >= 0 else -1
        pos = j + shift
        if j >= 0 and offsets[j][1] > begin and ids[j] in marker_ids and pos >= 0:
            spans.append((pos, pos + 1))
        else:
            spans.append(None)
            missing += 1
    if missing:
        warnings.warn(
            f"{missing} step marker(s) did not tokenize as the marker token; those steps score NaN",
            stacklevel=3,
        )
    return Encoded(ids, spans)


def chat_pieces(tokenizer, messages: list[dict[str, str]], marker: str, **template_args) -> list[str | Marker]:
    """Render `messages` with the tokenizer's chat template; each `SENTINEL` in them becomes `Marker(marker)`."""
    expected = sum(m["content"].count(SENTINEL) for m in messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False, **template_args)
    parts = text.split(SENTINEL)
    if len(parts) - 1 != expected:
        raise ValueError(f"the chat template kept {len(parts) - 1} of {expected} step markers")
    pieces: list[str | Marker] = [parts[0]]
    for part in parts[1:]:
        pieces += [Marker(marker), part]
    return pieces
