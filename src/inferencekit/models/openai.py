"""An OpenAI-compatible completions server (vLLM, llama.cpp's server, SGLang, ...) as a generator.

`spec.base_url` names the server (default `$OPENAI_BASE_URL`), `spec.path` the served model. Prompts go
to `/v1/completions` as raw text, so search methods can continue partial solutions; requests run
concurrently and the server batches them. Servers that ignore `n` (llama.cpp's) are asked again, with
another seed, until each prompt has its `n` samples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from inferencekit.models.base import (
    Completion,
    GenerationError,
    Generator,
    GeneratorSpec,
    Message,
    SamplingParams,
    Timer,
    Usage,
    per_prompt_params,
    truncate_at_stop,
)

_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


_warned_stop_reason = False


def _warn_stop_reason() -> None:
    global _warned_stop_reason
    _warned_stop_reason = True
    logging.getLogger("inferencekit").warning(
        "this server does not report which stop string ended a completion (vLLM and SGLang do): "
        "tree search cannot tell a finished step from a finished solution with it"
    )


class OpenAIGenerator(Generator):
    name = "openai"

    def __init__(self, spec: GeneratorSpec) -> None:
        super().__init__()
        from openai import OpenAI

        base_url = spec.base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ValueError("the openai backend needs a server: --model-arg base_url=http://HOST:PORT/v1")
        self.spec = spec
        self.model = spec.path
        self.client = OpenAI(base_url=base_url, api_key=spec.api_key or os.environ.get("OPENAI_API_KEY", "none"))
        self.concurrency = spec.max_batch_sequences
        self._template = self._chat_template(spec)

    @staticmethod
    def _chat_template(spec: GeneratorSpec):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        source = spec.chat_template
        tokenizer = spec.tokenizer
        if source is None and tokenizer:  # a local folder or hub id whose tokenizer carries the template
            from transformers import AutoTokenizer

            source = AutoTokenizer.from_pretrained(tokenizer).chat_template
        return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
            source or _FALLBACK_TEMPLATE
        )

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt)

    def count_tokens(self, text: str) -> int:
        # The completions API has no tokenizer endpoint; ask for zero new tokens and read the usage.
        response = self.client.completions.create(model=self.model, prompt=text, max_tokens=1, temperature=0)
        return response.usage.prompt_tokens if response.usage else len(text.split())

    def generate(
        self, prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[list[Completion]]:
        per_prompt = per_prompt_params(prompts, params)
        with Timer() as timer, ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(self._samples, prompts, per_prompt))
        usage = Usage(calls=1, seconds=timer.seconds)
        for _, u in results:
            usage.prompt_tokens += u.prompt_tokens
            usage.computed_prompt_tokens += u.computed_prompt_tokens
            usage.completion_tokens += u.completion_tokens
        self._record(usage)
        return [completions for completions, _ in results]

    def _samples(self, prompt: str, params: SamplingParams) -> tuple[list[Completion], Usage]:
        completions: list[Completion] = []
        usage = Usage()
        attempt = 0
        wanted = 1 if params.greedy else params.n
        while len(completions) < wanted:
            response = self._create(
                model=self.model,
                prompt=prompt,
                n=wanted - len(completions),
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop)[:4] or None,  # the OpenAI API takes at most 4 stop strings
                seed=params.seed + attempt,
                logprobs=max(int(params.logprobs), params.top_logprobs) or None,
                extra_body={"top_k": params.top_k} if params.top_k else None,
            )
            attempt += 1
            if response.usage:
                usage.prompt_tokens += response.usage.prompt_tokens
                usage.computed_prompt_tokens += response.usage.prompt_tokens
                usage.completion_tokens += response.usage.completion_tokens
            share = (response.usage.completion_tokens // max(len(response.choices), 1)) if response.usage else 0
            for choice in response.choices:
                completions.append(self._completion(choice, params, share))
        if params.greedy:
            completions = completions * params.n
        return completions[: params.n], usage

    def _create(self, **request):
        """One completions request; a failure that outlived the client's retries is a `GenerationError`."""
        from openai import APIError

        try:
            return self.client.completions.create(**request)
        except APIError as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise GenerationError(f"{self.client.base_url}: {type(exc).__name__}: {reason}") from exc

    @staticmethod
    def _completion(choice, params: SamplingParams, token_share: int) -> Completion:
        logprobs = None
        tokens = token_share
        if choice.logprobs and choice.logprobs.token_logprobs is not None:
            logprobs = [float(x) for x in choice.logprobs.token_logprobs]
            tokens = len(logprobs)
        tops = None
        if params.top_logprobs and choice.logprobs and choice.logprobs.top_logprobs is not None:
            tops = [sorted((d or {}).items(), key=lambda kv: -kv[1])[: params.top_logprobs]
                    for d in choice.logprobs.top_logprobs]
        text, stop_reason = truncate_at_stop(choice.text, params.stop)  # stops past the API's first 4
        if stop_reason is None and choice.finish_reason == "stop" and params.stop:
            # The server cut the stop string off; vLLM says which in `stop_reason`, SGLang in `matched_stop`.
            extra = choice.model_extra or {}
            reported = extra.get("stop_reason", extra.get("matched_stop"))
            if isinstance(reported, str) and reported in params.stop:
                stop_reason = reported
            elif reported is None and not _warned_stop_reason:
                _warn_stop_reason()
        if stop_reason and params.include_stop:
            text += stop_reason
        finish = "length" if choice.finish_reason == "length" and stop_reason is None else "stop"
        return Completion(text=text, tokens=tokens, finish_reason=finish, stop_reason=stop_reason,
                          logprobs=logprobs if params.logprobs else None, top_logprobs=tops)
