"""Batching of variable-length inputs: pack by a padded-token budget, pad with attention masks."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pack_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each holding at most `max_tokens` padded tokens.

    Sorting by length keeps padding small; an input longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]  # the first is the longest
        if current and (len(current) + 1) * width > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right", multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """(input_ids, attention_mask, position_ids, offsets): offsets[r] is where row r's first token sits.

    The width is rounded up to `multiple`. Position ids count real tokens only, so a left-padded row
    sees the same positions as alone.
    """
    width = round_up(max(len(s) for s in sequences), multiple)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(sequences):
        start = width - len(seq) if side == "left" else 0
        ids[row, start : start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, start : start + len(seq)] = 1
        offsets.append(start)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions, offsets
