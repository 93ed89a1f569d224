"""Reward models run on a transformers model: loading, batched forward passes and read-out of step scores.

A format subclass says which auto class loads its checkpoint, how to encode one (question, steps) pair
(`encode` -> token ids and per-step read-out spans) and what score each token position gets
(`token_scores`); this class does the rest: truncation, length-sorted packing into batches bounded by
`max_tokens_per_batch` padded tokens, padding with attention masks and position ids, and gathering.
"""

from __future__ import annotations

import math
import warnings
from abc import abstractmethod
from typing import Any, ClassVar

import torch

from inferencekit.errors import UserError, first_line
from inferencekit.models.base import Timer, Usage
from inferencekit.models.torch_options import attention_without_cudnn, torch_dtype
from inferencekit.models.torch_options import model_context_length as context_length
from inferencekit.reward_models.base import RewardModel, ScoreItem
from inferencekit.reward_models.batching import pack_batches, pad_batch, round_up
from inferencekit.reward_models.encoding import Encoded


def default_device(device: str | None) -> str:
    """`device`, or cuda when available, else cpu."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_transformers(
    path: str, auto_class: str, *, trust_remote_code: bool, device: str, dtype: str, **model_kwargs: Any
) -> tuple[Any, Any]:
    """(tokenizer, model in eval mode) of a folder or hub id; `UserError` saying why when loading fails.

    `device="auto"` spreads the model over the GPUs (device_map="auto"). dtype "auto" keeps the
    checkpoint's dtype on GPU and uses float32 on CPU, where half precision is slow.
    """
    import transformers

    chosen = torch_dtype(dtype)
    if chosen == "auto" and device == "cpu":
        chosen = torch.float32
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    kwargs = dict(model_kwargs, dtype=chosen, **remote)
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **remote)
        model = getattr(transformers, auto_class).from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = first_line(exc)
        hint = "" if trust_remote_code else " (if the checkpoint ships its own code, pass trust_remote_code=True)"
        raise UserError(f"could not load reward model {path!r} with {auto_class}: {first}{hint}") from None
    if device != "auto":
        model.to(device)
    return tokenizer, model.eval()


class TransformersRewardModel(RewardModel):
    """Base of the formats that run a transformers checkpoint (see module docstring)."""

    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    padding_side: ClassVar[str] = "right"
    model: Any = None  # the transformers model, once loaded (or handed over by a generator); None after close

    def parameter_count(self) -> int | None:
        return None if self.model is None else int(self.model.num_parameters())

    def load(self) -> None:
        s = self.settings
        if not s.path:
            raise UserError(f"reward model format {self.format_name!r} needs a checkpoint path or hub id")
        self.device = default_device(s.device)
        self.tokenizer, self.model = load_transformers(
            s.path,
            self.choose_auto_class(s.path),
            trust_remote_code=s.trust_remote_code,
            device=self.device,
            dtype=s.dtype,
        )
        self.setup_model()

    def setup_model(self) -> None:
        """Derive what batching needs from the loaded model and tokenizer."""
        tok = self.tokenizer
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        self.max_length = self.settings.max_length or context_length(self.model, tok)
        self.pad_multiple = 8 if self.input_device.type == "cuda" else 1  # tensor-core friendly widths
        if not getattr(self, "device", None):  # a model handed over by a generator
            self.device = str(self.input_device)

    def choose_auto_class(self, path: str) -> str:
        """The transformers auto class loading `path` (formats override to look at the config)."""
        return self.auto_class

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @abstractmethod
    def encode(self, item: ScoreItem) -> Encoded:
        """Token ids of one input and each step's read-out span."""

    @abstractmethod
    def token_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
        """A [batch, tokens] tensor of per-position scores, read at the steps' spans."""

    def reduce(self, values: torch.Tensor) -> float:
        """A step's score from its span's token scores (one value for marker formats)."""
        return float(values[-1])

    def score_items(self, items: list[ScoreItem]) -> list[list[float]]:
        with Timer() as timer:
            results: list[list[float]] = [[math.nan] * len(item.steps) for item in items]
            encoded = {i: self.encode(item) for i, item in enumerate(items) if item.steps}
            too_long = [i for i, enc in encoded.items() if len(enc.ids) > self.max_length]
            if too_long:
                warnings.warn(
                    f"{len(too_long)} of {len(encoded)} reward model inputs are longer than {self.max_length} "
                    "tokens and were cut from the left; steps cut off score NaN",
                    stacklevel=3,
                )
                for i in too_long:
                    encoded[i] = encoded[i].truncated_left(self.max_length)
            keys = list(encoded)
            widths = [round_up(len(encoded[k].ids), self.pad_multiple) for k in keys]
            batches = pack_batches(widths, self.settings.max_tokens_per_batch)
            usage = Usage()
            with torch.inference_mode():
                for batch in batches:
                    rows = [encoded[keys[b]] for b in batch]
                    for b, scores in zip(batch, self._run_batch(rows), strict=True):
                        results[keys[b]] = scores
                    usage.calls += 1
                    usage.prompt_tokens += sum(len(r.ids) for r in rows)
            usage.computed_prompt_tokens = usage.prompt_tokens
        usage.seconds = timer.seconds
        self.usage.add(usage)
        return results

    def _run_batch(self, rows: list[Encoded]) -> list[list[float]]:
        ids, mask, positions, offsets = pad_batch(
            [r.ids for r in rows], self.pad_id, self.padding_side, self.pad_multiple
        )
        device = self.input_device
        with attention_without_cudnn(device):
            scores = self.token_scores(ids.to(device), mask.to(device), positions.to(device)).float().cpu()
        return [
            [math.nan if span is None else self.reduce(scores[row, off + span[0] : off + span[1]]) for span in r.spans]
            for row, (r, off) in enumerate(zip(rows, offsets, strict=True))
        ]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, **kw):
        """The model's output for a padded batch."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kw)

    def hidden_and_head(self, input_ids, attention_mask, position_ids) -> tuple[torch.Tensor, torch.nn.Linear] | None:
        """The decoder's last hidden states and the LM head, or None when logits are more than head(hidden).

        Lets formats apply only the part of the LM head they need: the full logits of a 128k vocabulary
        over a batch take gigabytes.
        """
        head = self.model.get_output_embeddings()
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        config = self.model.config
        plain = all(getattr(config, name, None) is None for name in ("final_logit_softcapping", "logit_scale"))
        if not (plain and isinstance(head, torch.nn.Linear) and decoder is not None):
            return None
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)[0]
        return hidden.to(head.weight.device), head

    def candidate_logits(
        self, token_ids: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Logits of a few vocabulary entries at every position: [batch, tokens, len(token_ids)]."""
        parts = self.hidden_and_head(input_ids, attention_mask, position_ids)
        if parts is None:
            return self.forward(input_ids, attention_mask, position_ids).logits[..., token_ids].float()
        hidden, head = parts
        index = torch.tensor(token_ids, device=head.weight.device)
        bias = head.bias[index] if head.bias is not None else None
        return torch.nn.functional.linear(hidden, head.weight[index], bias).float()

    def close(self) -> None:
        self.model = None
