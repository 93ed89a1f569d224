"""`HFGenerator`: the `Generator` interface over a transformers causal LM, with the batcher in front of it."""

from __future__ import annotations

import gc
import inspect
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig

from inferencekit.coalesce import Coalescer
from inferencekit.models.base import Completion, Generator, GeneratorSpec, Request, SamplingParams, Usage
from inferencekit.models.certainty import kl_uniform_rows
from inferencekit.models.hf.decoding import BatchedDecoding
from inferencekit.models.hf.loading import load_checkpoint
from inferencekit.models.hf.prefix_cache import StaticLayer, _Row
from inferencekit.models.hf_text import TokenizerText
from inferencekit.models.torch_options import attention_without_cudnn, model_context_length

GATHER_LINGER_S = 0.05  # how long a gathered batch waits for a next arrival (see inferencekit.coalesce)


class HFGenerator(TokenizerText, BatchedDecoding, Generator):
    """A causal LM run with transformers (`backend: hf`)."""

    backend = "hf"
    can_score_certainty = True  # certainty_text below

    def __init__(self, spec: GeneratorSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model_name = spec.name
        self.max_batch_sequences = max(1, int(spec.max_batch_sequences))
        self._share_prompts = True  # compute what rows share once (see _prefill)
        self._prefix: tuple[list[int], DynamicCache] | None = None
        self._preallocate = StaticLayer is not None  # decode into a preallocated KV cache (see _preallocated)
        self.tokenizer, self.model = load_checkpoint(spec)
        self.model.eval()
        # as generate does: only the last position's logits, where the model's forward can be told so
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(
            self.model.forward).parameters else {}
        self._setup_tokenizer()
        self._setup_generation_config()
        self._gather: Coalescer[list[Request], list[list[Completion]]] = Coalescer(
            self._generate_many, self.max_batch_sequences, weight=_rows, linger=GATHER_LINGER_S)

    # ----------------------------------------------------------------- setup

    def _setup_tokenizer(self) -> None:
        tok = self.tokenizer
        tok.padding_side = "left"
        self._setup_text(self.spec.chat_template)
        if tok.pad_token is None:
            if tok.eos_token is not None:
                tok.pad_token = tok.eos_token
            elif tok.unk_token is not None:
                tok.pad_token = tok.unk_token
            else:
                tok.add_special_tokens({"pad_token": "<|pad|>"})
                if len(tok) > self.model.get_input_embeddings().weight.shape[0]:
                    self.model.resize_token_embeddings(len(tok))

    def _setup_generation_config(self) -> None:
        """Replace the model's generation config by one holding only the special token ids.

        transformers fills unset generation settings from the model's own config (repetition
        penalty, forced tokens...); SamplingParams is the whole specification here.
        """
        original = self.model.generation_config
        eos = getattr(original, "eos_token_id", None) if original is not None else None
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(self.tokenizer.eos_token_id)
        self.eos_token_ids = eos_ids
        self.pad_token_id = self.tokenizer.pad_token_id
        self.model.generation_config = GenerationConfig(
            eos_token_id=eos_ids or None,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )

    @property
    def input_device(self) -> torch.device:
        """Device of the input embeddings, where inputs go (the first shard under device_map)."""
        return self.model.get_input_embeddings().weight.device

    # ------------------------------------------------------------ interface

    @property
    def context_length(self) -> int:
        return model_context_length(self.model, self.tokenizer)

    def torch_model(self) -> tuple[torch.nn.Module, Any]:
        return self.model, self.tokenizer

    def engine_settings(self) -> dict[str, Any]:
        """The settings that can change the bits this engine computes, for the run's provenance record."""
        if self.model is None:  # closed
            return {}
        out: dict[str, Any] = {"torch_dtype": str(self.model.dtype), "device": str(self.model.device)}
        attention = getattr(self.model.config, "_attn_implementation", None)  # transformers' private field
        if attention:
            out["attention"] = attention
        out["torch_threads"] = torch.get_num_threads()
        out["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        return out

    def parameter_count(self) -> int | None:
        return None if self.model is None else int(self.model.num_parameters())

    def certainty_text(
        self, prompts: Sequence[str], responses: Sequence[str], usage: Usage | None = None
    ) -> list[list[float]]:
        """Per-token self-certainty of each response (see `Generator.certainty_text`): one forward pass per
        response, its positions' full logits only (`logits_to_keep` where the model takes it)."""
        start = time.perf_counter()
        out, total = [], 0
        with torch.inference_mode(), self._attention_backends():
            for prompt, response in zip(prompts, responses, strict=True):
                head = self.encode(prompt)
                tail = list(self.tokenizer(response, add_special_tokens=False)["input_ids"])
                total += len(head) + len(tail)
                if not tail:
                    out.append([])
                    continue
                ids = torch.tensor([head + tail], device=self.input_device)
                keep = {"logits_to_keep": len(tail) + 1} if self._last_logits else {}
                logits = self.model(input_ids=ids, **keep).logits[0, -len(tail) - 1 : -1]
                out.append(kl_uniform_rows(logits).tolist())
        work = Usage(calls=1, prompt_tokens=total, computed_prompt_tokens=total, seconds=time.perf_counter() - start)
        self._record_scoring(work, usage)
        return out

    def submit(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """`params.n` completions per request; usage counts the work done (greedy copies count once).

        Safe from many threads: calls arriving while a batch runs are gathered into the next one, so
        the problems in flight share forward passes; each request's work goes to its own account.
        """
        return self._gather(list(requests))

    def _generate_many(self, calls: list[list[Request]]) -> list[list[list[Completion]]]:
        """One batched generation for the gathered calls; each request's work recorded to its account."""
        requests = [r for call in calls for r in call]
        plist = [r.params for r in requests]
        out, computed, encoded = self._generate_now([r.prompt for r in requests], plist)
        for i, r in enumerate(requests):
            self._record(Usage(prompt_tokens=len(encoded[i]) * plist[i].n, computed_prompt_tokens=computed.get(i, 0),
                               completion_tokens=sum(c.tokens for c in _counted(out[i], plist[i]))), r.account)
        results, at = [], 0
        for call in calls:
            results.append(out[at : at + len(call)])
            at += len(call)
        return results

    def _generate_now(
        self, prompts: list[str], plist: list[SamplingParams]
    ) -> tuple[list[list[Completion]], dict[int, int], list[list[int]]]:
        """Completions per prompt, prompt tokens computed per prompt, and the prompts' token ids."""
        self._check_cancelled()  # requests gathered before a cancel
        encoded = [self.encode(p) for p in prompts]
        groups: dict[tuple, list[_Row]] = {}  # rows with other token caps share a batch; stop strings not
        for i, p in enumerate(plist):
            for j in range(1 if p.greedy else p.n):
                groups.setdefault(p.stop, []).append(_Row(i, j))
        done: dict[tuple[int, int], Completion] = {}
        computed: dict[int, int] = {}
        for stop, rows in groups.items():
            rows.sort(key=lambda r: len(encoded[r.prompt]))  # similar lengths share a batch
            for start in range(0, len(rows), self.max_batch_sequences):
                chunk = rows[start : start + self.max_batch_sequences]
                results, work = self._run_batch(chunk, prompts, plist, encoded, stop)
                for i, n in work.items():
                    computed[i] = computed.get(i, 0) + n
                for row, completion in zip(chunk, results, strict=True):
                    done[row.prompt, row.sample] = completion
        out: list[list[Completion]] = []
        for i, p in enumerate(plist):
            if p.greedy:
                first = done[i, 0]
                out.append([first] + [replace(first, logprobs=_copy(first.logprobs), top_logprobs=_copy(
                    first.top_logprobs)) for _ in range(p.n - 1)])
            else:
                out.append([done[i, j] for j in range(p.n)])
        return out, computed, encoded

    def close(self) -> None:
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------- decoding

    def _attention_backends(self) -> AbstractContextManager:
        """On CUDA, keep torch's SDPA off its cuDNN backend during generation.

        cuDNN attention builds a plan for every new (batch, length) shape, and decoding meets a new
        length at every step: measured on an H200 (torch 2.11), 20 vs 110-130 tokens/s at batch 1 and
        500 vs 3000-4700 at batch 32 on a fresh model. Flash / memory-efficient kernels have no such cost.
        """
        return attention_without_cudnn(self.input_device)

def _rows(requests: list[Request]) -> int:
    """Sequences a call decodes: a greedy prompt's copies are decoded once."""
    return sum(1 if r.params.greedy else r.params.n for r in requests)



def _counted(completions: list[Completion], params: SamplingParams) -> list[Completion]:
    """The completions actually decoded: a greedy prompt's copies count once."""
    return completions[:1] if params.greedy else completions


def _copy(values: list | None) -> list | None:
    return None if values is None else [list(v) if isinstance(v, list) else v for v in values]
