"""What a served model is prompted and sampled with: its chat template and the server's neutral sampling.

The openai backend sends rendered prompts to `/v1/completions`, so it needs the model's own chat template.
In order: `chat_template` (Jinja text), `tokenizer` (a .gguf file, a tokenizer folder or hub id), the
model path when it is a local .gguf file, else the template the server reports: llama.cpp's server
(`llama-server`) in `GET /props`, vLLM by rendering messages itself (`POST /tokenize` with messages, then
`/detokenize`). When none can be had (llama-cpp-python's server, SGLang, others say nothing) the run stops
with one line naming `tokenizer=` and `chat_template=`; no generic template is guessed.

Servers also sample with defaults of their own that change results: llama-cpp-python's and llama.cpp's
top-k 40, min-p 0.05 and repeat penalty (1.1 in llama-cpp-python), vLLM's and SGLang's the model's
`generation_config` (top-k, min-p, repetition penalty). Each request states the neutral values for the
server's kind (what the in-process engines do), unless the user sets them in `extra_body` or `top_k`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferencekit.errors import UserError, first_line
from inferencekit.models.base import GeneratorSpec, Message

# keys each kind of server takes, at the values that leave the distribution as the model gives it
NEUTRAL_SAMPLING: dict[str, dict[str, Any]] = {
    "llama.cpp": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "typical_p": 1.0},
    "llama-cpp-python": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
    "vllm": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0},
    "sglang": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
               "frequency_penalty": 0.0},
    "unknown": {},
}
TIMEOUT = 10.0  # seconds per introspection request


@dataclass
class ServerInfo:
    """What kind of server answers at `url` (an OpenAI base URL), and llama.cpp's `/props` when it has them."""

    url: str
    kind: str = "unknown"
    props: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")


def _request(url: str, key: str | None, body: dict | None = None) -> Any:
    """The JSON a GET (or a POST of `body`) answers; None for any failure (a missing route is an answer too)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - the user's own server
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def inspect_server(url: str, key: str | None) -> ServerInfo:
    """Tell llama.cpp's server, SGLang, vLLM and llama-cpp-python's server apart by the routes only each has."""
    info = ServerInfo(url.rstrip("/"))
    props = _request(f"{info.root}/props", key)
    if isinstance(props, dict) and ("default_generation_settings" in props or "chat_template" in props):
        info.kind, info.props = "llama.cpp", props
    elif isinstance(got := _request(f"{info.root}/get_model_info", key), dict) and "model_path" in got:
        info.kind = "sglang"
    elif isinstance(got := _request(f"{info.root}/version", key), dict) and "version" in got:
        info.kind = "vllm"
    elif "llama.cpp Python" in str((_request(f"{info.root}/openapi.json", key) or {}).get("info") or {}):
        info.kind = "llama-cpp-python"
    return info


@dataclass
class ChatTemplate:
    """A served model's chat template: `render(messages, add_generation_prompt)`, where it came from, its text."""

    origin: str
    source: str | None  # the Jinja text; None where the server renders
    render: Callable[[Sequence[Message], bool], str]

    def record(self) -> dict[str, Any]:
        """What the run's provenance records."""
        digest = hashlib.sha256(self.source.encode()).hexdigest() if self.source is not None else None
        return {"origin": self.origin, "sha256": digest, "template": self.source}


def _jinja(source: str, bos: str = "", eos: str = "") -> Callable[[Sequence[Message], bool], str]:
    """Render as the llama.cpp backend does (llama-cpp-python's formatter, with the model's BOS and EOS text)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatters = {agp: Jinja2ChatFormatter(source, eos, bos, add_generation_prompt=agp) for agp in (True, False)}
    return lambda messages, agp: formatters[agp](messages=list(messages)).prompt


def _gguf_template(path: str) -> ChatTemplate | None:
    """The template inside a local GGUF file, with its BOS and EOS tokens' text, as llama.cpp reads them."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields

    def value(name: str) -> Any:
        f = fields.get(name)
        return None if f is None else f.parts[f.data[0]]

    source = value("tokenizer.chat_template")
    if source is None:
        return None
    tokens = fields.get("tokenizer.ggml.tokens")

    def token_text(name: str) -> str:
        i = value(name)
        if tokens is None or i is None or not 0 <= int(i[0]) < len(tokens.data):
            return ""
        return bytes(tokens.parts[tokens.data[int(i[0])]]).decode("utf-8", "replace")

    text = bytes(source).decode("utf-8")
    bos, eos = token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id")
    return ChatTemplate(f"GGUF file {path}", text, _jinja(text, bos, eos))


def _tokenizer_template(name: str) -> ChatTemplate:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the tokenizer {name!r} (--model-arg tokenizer=): {first_line(exc)}") from None
    if not tokenizer.chat_template:
        raise UserError(f"the tokenizer {name!r} has no chat template; give one with --model-arg chat_template=")

    def render(messages: Sequence[Message], agp: bool) -> str:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=agp)

    return ChatTemplate(f"tokenizer {name}", str(tokenizer.chat_template), render)


def _vllm_template(info: ServerInfo, model: str, key: str | None) -> ChatTemplate | None:
    """vLLM applies the model's template itself: messages to tokens (`/tokenize`), tokens to text (`/detokenize`)."""

    @functools.lru_cache(maxsize=4096)
    def render_json(messages: str, agp: bool) -> str:
        got = _request(f"{info.root}/tokenize", key,
                       {"model": model, "messages": json.loads(messages), "add_generation_prompt": agp})
        tokens = got.get("tokens") if isinstance(got, dict) else None
        text = _request(f"{info.root}/detokenize", key, {"model": model, "tokens": tokens}) if tokens else None
        if not isinstance(text, dict) or not isinstance(text.get("prompt"), str):
            raise UserError(f"{info.root} did not render the chat template (POST /tokenize with messages, "
                            "then /detokenize); give --model-arg tokenizer= or chat_template=")
        return text["prompt"]

    def render(messages: Sequence[Message], agp: bool) -> str:
        return render_json(json.dumps(list(messages), sort_keys=True), agp)

    try:
        render([{"role": "user", "content": "1 + 1 ="}], True)
    except UserError:
        return None
    return ChatTemplate(f"{info.root}/tokenize and /detokenize (vLLM applies the model's template)", None, render)


def chat_template(spec: GeneratorSpec, servers: Sequence[ServerInfo], key: str | None) -> ChatTemplate:
    """The served model's chat template, from the first source that has one (see the module docstring)."""
    if spec.chat_template:
        return ChatTemplate("chat_template model argument", spec.chat_template, _jinja(spec.chat_template))
    tokenizer = spec.tokenizer
    if tokenizer and not (tokenizer.endswith(".gguf") and Path(tokenizer).expanduser().is_file()):
        return _tokenizer_template(tokenizer)
    for path in (tokenizer, spec.path):
        if path and path.endswith(".gguf") and Path(path).expanduser().is_file():
            found = _gguf_template(str(Path(path).expanduser()))
            if found is None:
                raise UserError(f"{path} holds no chat template; give one with --model-arg chat_template=")
            return found
    for info in servers:
        if info.kind == "llama.cpp" and isinstance(info.props.get("chat_template"), str):
            source = info.props["chat_template"]
            return ChatTemplate(f"{info.root}/props", source,
                                _jinja(source, info.props.get("bos_token") or "", info.props.get("eos_token") or ""))
        if info.kind == "vllm" and (found := _vllm_template(info, spec.path, key)) is not None:
            return found
    kinds = ", ".join(sorted({f"{i.root} ({i.kind})" for i in servers}))
    raise UserError(
        f"no chat template for the served model {spec.path!r}: {kinds} does not report one; name the model's "
        "tokenizer with --model-arg tokenizer=FOLDER|HUB_ID|FILE.gguf or give --model-arg chat_template=JINJA"
    )
