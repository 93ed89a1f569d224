"""What the rows of a batch share, computed once: the prompts' common prefix (kept between batches), each
distinct prompt's remainder copied to its samples, and the preallocated KV cache they decode into."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Cache, DynamicCache, StaticCache

from inferencekit.errors import first_line as _one_line

logger = logging.getLogger(__name__)

try:  # per-layer caches arrived in transformers 4.54; before them decoding keeps the growing cache
    from transformers.cache_utils import StaticLayer
except ImportError:
    StaticLayer = None

try:  # transformers renamed generate's `past_key_values` to `cache`
    from transformers.generation.utils import ALL_CACHE_NAMES

    _CACHE_KWARG = ALL_CACHE_NAMES[0]
except ImportError:
    _CACHE_KWARG = "past_key_values"

MIN_SHARED_PREFIX = 16  # tokens; a shorter common prefix is not worth its own forward pass


@dataclass
class _Row:
    """One sequence to decode: sample `sample` of prompt `prompt`."""

    prompt: int
    sample: int


class SharedPrefixes:
    """Mixin of `HFGenerator`: prefill and KV caches. The class using it sets `model`, `pad_token_id`,
    `_share_prompts`, `_prefix` and `_preallocate`, and provides `input_device` and `_attention_backends`."""

    model: Any
    pad_token_id: int | None
    input_device: torch.device
    _share_prompts: bool
    _prefix: tuple[list[int], DynamicCache] | None
    _preallocate: bool

    def _prefill(
        self, rows: list[_Row], encoded: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, DynamicCache | None, dict[int, int]]:
        """The batch's input ids, attention mask, KV cache of all but their last position, and prompt tokens
        computed per prompt.

        What the rows share is computed once: the prompts' common prefix (a few-shot block, a tree's path;
        kept between batches in `_prefix`), then each distinct prompt's remainder, copied to its samples.
        Each row is laid out as [common prefix][padding][remainder], so positions stay contiguous. Without
        a shared part (or for a model whose cache cannot be built this way) rows are left-padded and
        `generate` computes everything (cache None).
        """
        distinct = list(dict.fromkeys(r.prompt for r in rows))
        seqs = [encoded[p] for p in distinct]
        common = min(_common_prefix(seqs), min(len(s) for s in seqs) - 1)
        if common < MIN_SHARED_PREFIX:
            common = 0
        if not self._share_prompts or max(map(len, seqs)) < 2 or (common == 0 and len(distinct) == len(rows)):
            return (*_layout([encoded[r.prompt] for r in rows], 0, self.pad_token_id), None,
                    {p: len(encoded[p]) * sum(r.prompt == p for r in rows) for p in distinct})
        ids, mask = _layout(seqs, common, self.pad_token_id)
        width = ids.shape[1]
        positions = _positions(mask)
        device = self.input_device
        try:
            with torch.inference_mode(), self._attention_backends():
                cache, prefix_work = self._prefix_cache(seqs[0][:common])
                cache.batch_repeat_interleave(len(distinct))
                if width - 1 > common:
                    self.model(
                        input_ids=ids[:, common:-1].to(device), attention_mask=mask[:, :-1].to(device),
                        position_ids=positions[:, common:-1].to(device), use_cache=True, **{_CACHE_KWARG: cache},
                    )
                slot = {p: i for i, p in enumerate(distinct)}
                select = torch.tensor([slot[r.prompt] for r in rows])
                cache.batch_select_indices(select)  # CPU indices: any device
        except Exception as e:  # noqa: BLE001 - any architecture-specific failure: fall back for good
            logger.warning("prompts are not shared between sequences with this model (%s)", _one_line(e))
            self._share_prompts = False
            self._prefix = None
            return self._prefill(rows, encoded)
        computed = {p: len(encoded[p]) - common - 1 + sum(r.prompt == p for r in rows) for p in distinct}
        computed[distinct[0]] += prefix_work
        return ids[select], mask[select], cache, computed

    def _preallocated(self, filled: DynamicCache | None, length: int) -> Cache | None:
        """A KV cache with room for `length` positions holding `filled`'s entries (None: empty), or
        `filled` itself where the model's layers are not all plain attention.

        A `DynamicCache` concatenates every layer's keys and values at each step: profiled on CPU
        (SmolLM2-135M, batch 16, 5-shot GSM8K prompts) that copying took 62% of decoding. A static
        cache writes each step in place; attention then spans the masked free positions too.
        """
        if not self._preallocate:
            return filled
        try:
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            if any(type(layer) is not StaticLayer for layer in cache.layers):
                raise ValueError("not every layer is a plain attention layer")
            if filled is not None:
                for layer, source in zip(cache.layers, filled.layers, strict=True):
                    layer.update(source.keys, source.values)
        except Exception as e:  # noqa: BLE001 - any architecture-specific failure: keep the dynamic cache
            logger.info("decoding with a growing cache for this model (%s)", _one_line(e))
            self._preallocate = False
            return filled
        return cache

    def _prefix_cache(self, prefix: list[int]) -> tuple[DynamicCache, int]:
        """A batch-of-one KV cache of `prefix` and the tokens computed to make it.

        The last prefix's cache is kept and reused as far as it matches (the few-shot block every problem
        starts with); only the rest is computed. Call under inference mode.
        """
        if not prefix:
            return DynamicCache(), 0
        kept, cache = (0, None)
        if self._prefix is not None:
            stored, stored_cache = self._prefix
            kept = _common_prefix([stored, prefix])
            if kept >= MIN_SHARED_PREFIX:
                cache = copy.deepcopy(stored_cache)
                if kept < len(stored):
                    cache.crop(kept - len(stored))  # tokens to remove: transformers 5 refuses a length
            else:
                kept = 0
        if cache is None:
            cache = DynamicCache()
        if kept < len(prefix):
            device = self.input_device
            self.model(
                input_ids=torch.tensor([prefix[kept:]], device=device),
                attention_mask=torch.ones((1, len(prefix)), dtype=torch.long, device=device),
                position_ids=torch.arange(kept, len(prefix), device=device)[None],
                use_cache=True, **{_CACHE_KWARG: cache},
            )
        self._prefix = (list(prefix), copy.deepcopy(cache))
        return cache, len(prefix) - kept


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all `seqs` share."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != first[k] for s in seqs[1:]):
            return k
    return n


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position in its row, counting only unmasked tokens, as `generate` numbers them."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _layout(seqs: Sequence[Sequence[int]], common: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask of `seqs` as [shared first `common` tokens][padding][the rest]."""
    width = common + max(len(s) - common for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :common], mask[b, :common] = torch.tensor(s[:common], dtype=torch.long), 1
        rest = len(s) - common
        if rest:
            ids[b, width - rest :], mask[b, width - rest :] = torch.tensor(s[common:], dtype=torch.long), 1
    return ids, mask

