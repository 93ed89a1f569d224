"""OpenAI-compatible completions servers (vLLM, SGLang, llama.cpp's server, ...) as a generator.

`spec.base_url` names the server, or several (`URL1,URL2` or a list in the config file; default
`$OPENAI_BASE_URL`), `spec.path` the served model. Prompts go to `/v1/completions` as raw text, so search
methods can continue partial solutions. Requests run concurrently (`AsyncOpenAI` on the pool's event loop,
at most `max_batch_sequences` in flight per server) and the servers batch them; several servers form a
`ReplicaPool` (least outstanding requests, per-problem affinity, retries, shedding a failing server).
Connection errors, timeouts, 429, 5xx and answers that are not a completion (broken JSON, a proxy's HTML
page) are retried with backoff (honouring `Retry-After`) up to `max_retries` times (timeouts `timeout_retries`
times), then the generation raises `GenerationError`. Servers that ignore `n` (llama.cpp's)
get one request per sample. The API key comes from `api_key`, `api_key_file` or `$OPENAI_API_KEY` and is
never written to the run folder. The chat template and the neutral sampling settings each request
states come from served.py.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from inferencekit.errors import UserError
from inferencekit.errors import first_line as _first_line
from inferencekit.models.base import (
    Completion,
    GeneratorSpec,
    Message,
    SamplingParams,
    Usage,
    truncate_at_stop,
)
from inferencekit.models.pool import Replica, ReplicaError, ReplicaPool, RetryPolicy
from inferencekit.models.served import NEUTRAL_SAMPLING, ServerInfo, chat_template, inspect_server

_warned_stop_reason = False


def _warn_stop_reason() -> None:
    global _warned_stop_reason
    _warned_stop_reason = True
    logging.getLogger("inferencekit").warning(
        "this server does not report which stop string ended a completion (vLLM and SGLang do): "
        "tree search cannot tell a finished step from a finished solution with it"
    )


def base_urls(spec: GeneratorSpec) -> list[str]:
    """The servers a spec names: `URL1,URL2`, a list, or `$OPENAI_BASE_URL`."""
    raw = spec.base_url or os.environ.get("OPENAI_BASE_URL") or ""
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    urls = [str(u).strip().rstrip("/") for u in items if str(u).strip()]
    if not urls:
        raise UserError("the openai backend needs a server: --model-arg base_url=http://HOST:PORT/v1 "
                        "(several: base_url=URL1,URL2)")
    return urls


def api_key(spec: GeneratorSpec) -> str:
    """`api_key`, else the first line of `api_key_file`, else `$OPENAI_API_KEY` (local servers need none)."""
    if spec.api_key:
        return spec.api_key
    if spec.api_key_file:
        path = Path(spec.api_key_file).expanduser()
        if not path.is_file():
            raise UserError(f"api_key_file not found: {path}")
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise UserError(f"api_key_file {path} is empty")
        return text.splitlines()[0].strip()
    return os.environ.get("OPENAI_API_KEY", "none")


def _retry_after(headers) -> float | None:
    """Seconds a server asked to wait (`Retry-After`: seconds or an HTTP date; `retry-after-ms`)."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


class OpenAIEndpoint(Replica):
    """One server. Each call is one HTTP request; failures are `ReplicaError`s the pool retries."""

    def __init__(self, base_url: str, model: str, key: str, timeout: float, extra_body: dict | None = None,
                 connect_timeout: float | None = None) -> None:
        from openai import AsyncOpenAI, Timeout

        self.extra_body = dict(extra_body or {})
        self.name = base_url
        self.model_name = model
        self.key = key
        self.info = ServerInfo(base_url)  # its kind, found by `check`
        self.reports_stop = False  # vLLM and SGLang say which stop string ended a completion
        self.client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0,
                                  timeout=Timeout(timeout, connect=connect_timeout or timeout))

    async def _call(self, coro):
        import openai

        try:
            return await coro
        except openai.APIStatusError as exc:
            message = f"HTTP {exc.status_code}: {_first_line(exc.message)}"
            raise ReplicaError(message, retryable=_retryable(exc.status_code),
                               retry_after=_retry_after(exc.response.headers)) from None
        except openai.APITimeoutError:
            raise ReplicaError("timed out", retryable=True, timed_out=True) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise ReplicaError(f"connection failed ({_first_line(str(cause)) or type(cause).__name__})",
                               retryable=True) from None
        except openai.APIError as exc:  # an answer that is not a completion
            raise ReplicaError(_first_line(str(exc)), retryable=False) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # 200 with a body that is not JSON
            raise ReplicaError(f"the answer is not valid JSON ({_first_line(exc)})", retryable=True) from None

    async def request(self, prompt: str, params: SamplingParams) -> tuple[list[Completion], Usage]:
        response = await self._call(self.client.completions.create(
            model=self.model_name,
            prompt=prompt,
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop)[:4] or None,  # the OpenAI API takes at most 4 stop strings
            seed=params.seed,
            # a server that does not say which stop string ended a completion shows it in the tokens
            logprobs=max(int(params.logprobs or (bool(params.stop) and not self.reports_stop)), params.top_logprobs)
            or None,
            extra_body=self.request_extra(params) or None,
        ))
        _check_completion(response)
        usage = Usage()
        if response.usage:
            usage.prompt_tokens = usage.computed_prompt_tokens = response.usage.prompt_tokens
            usage.completion_tokens = response.usage.completion_tokens
        share = (response.usage.completion_tokens // max(len(response.choices), 1)) if response.usage else 0
        if any(k in (c.model_extra or {}) for c in response.choices for k in ("stop_reason", "matched_stop")):
            self.reports_stop = True
        return [_completion(choice, params, share) for choice in response.choices], usage

    def request_extra(self, params: SamplingParams) -> dict:
        """Fields beyond the OpenAI API: the server's neutral sampling, then the user's `extra_body` and `top_k`."""
        own = {"top_k": params.top_k} if params.top_k else {}
        return {**NEUTRAL_SAMPLING[self.info.kind], **self.extra_body, **own}

    async def count_tokens(self, text: str) -> int:
        # The completions API has no tokenizer endpoint; ask for one new token and read the usage.
        response = await self._call(
            self.client.completions.create(model=self.model_name, prompt=text, max_tokens=1, temperature=0)
        )
        _check_completion(response)
        return response.usage.prompt_tokens if response.usage else len(text.split())

    async def check(self) -> str | None:
        try:
            page = await self._call(self.client.with_options(timeout=10).models.list())
        except ReplicaError as exc:
            return f"does not answer ({exc})"
        data = getattr(page, "data", None)
        if not isinstance(data, list):
            return f"does not answer with a model list ({_snippet(page)})"
        ids = [m.id for m in data]
        if ids and not any(_same_model(self.model_name, i) for i in ids):
            return f"serves {', '.join(ids)}, not {self.model_name}"
        self.info = await asyncio.to_thread(inspect_server, self.name, self.key)
        return None

    async def aclose(self) -> None:
        await self.client.close()


def _same_model(wanted: str, served: str) -> bool:
    """A served id names the model when equal, or when one is a file path whose name or stem is the other."""
    names = {served, Path(served).name, Path(served).stem}
    return wanted in names or Path(wanted).name in names


class OpenAIGenerator(ReplicaPool):
    backend = "openai"

    def __init__(self, spec: GeneratorSpec) -> None:
        urls = base_urls(spec)
        key = api_key(spec)
        endpoints = [OpenAIEndpoint(url, spec.path, key, spec.request_timeout, spec.extra_body, spec.connect_timeout)
                     for url in urls]
        super().__init__(endpoints, max_in_flight=spec.max_batch_sequences, policy=RetryPolicy.of(spec))
        self.spec = spec
        self.model_name = spec.path  # the id sent with every request
        try:
            bad = self.check_replicas()
            if bad:
                raise UserError(f"{len(bad)} of {len(urls)} server(s) failed the health check: " + "; ".join(bad))
            self.template = chat_template(spec, [e.info for e in endpoints], key)
        except BaseException:
            self.close()
            raise

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages, add_generation_prompt)

    def engine_settings(self) -> dict:
        """For the run's provenance: the chat template used and its origin, each server's kind and neutral sampling."""
        return {"chat_template": self.template.record(),
                "servers": [{"url": e.name, "kind": e.info.kind, "sampling": e.request_extra(SamplingParams())}
                            for e in self.replicas]}


def _check_completion(response) -> None:
    """A `ReplicaError` (retried) for a 200 answer that is no completion: a proxy's HTML page, an error object."""
    from openai.types import Completion as APICompletion

    choices = getattr(response, "choices", None) if isinstance(response, APICompletion) else None
    if not choices or not all(isinstance(getattr(c, "text", None), str) for c in choices):
        raise ReplicaError(f"the answer is not a completion ({_snippet(response)})", retryable=True)


def _snippet(answer: object, limit: int = 80) -> str:
    """The start of an unexpected answer, on one line."""
    text = answer if isinstance(answer, str) else repr(answer)
    return " ".join(text.split())[:limit] or "empty"


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
        elif reported is None and choice.logprobs and choice.logprobs.tokens:
            stop_reason = _stop_in_tokens(text, choice.logprobs.tokens, params.stop)  # llama.cpp's server
        if stop_reason is None and reported is None and not _warned_stop_reason and not choice.logprobs:
            _warn_stop_reason()
    if stop_reason and params.include_stop:
        text += stop_reason
    finish = "length" if choice.finish_reason == "length" and stop_reason is None else "stop"
    return Completion(text=text, tokens=tokens, finish_reason=finish, stop_reason=stop_reason,
                      logprobs=logprobs if params.logprobs else None, top_logprobs=tops)


def _stop_in_tokens(text: str, tokens: Sequence[str], stop: Sequence[str]) -> str | None:
    """The stop string the generated tokens hold right after the returned text (the server cut it off)."""
    tail = "".join(tokens)[len(text):]
    found = [s for s in stop if s and tail.startswith(s)]
    return max(found, key=len) if found else None
