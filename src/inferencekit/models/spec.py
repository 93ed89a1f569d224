"""What is needed to build a generator: resolved from a preset, a path or a hub id (`GeneratorSpec`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field


def _on_off(value: Any) -> Any:
    """`on`/`off` as YAML reads them from --model-arg (booleans) back to words."""
    return ("on" if value else "off") if isinstance(value, bool) else value


@dataclass
class GeneratorSpec:
    """What is needed to build a generator: resolved from a preset, a path or a hub id."""

    name: str
    path: str
    backend: str
    gguf_file: str | None = None
    chat_template: str | None = None
    dtype: str = "auto"
    device_map: str | None = None
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    n_ctx: Annotated[int, Field(ge=1)] = 4096  # llamacpp: tokens per sequence, prompt and completion
    n_threads: Annotated[int, Field(ge=1)] | None = None  # llamacpp: CPU threads (None: all cores)
    max_batch_sequences: Annotated[int, Field(ge=1)] = 64  # sequences decoded together (openai: requests in flight)
    base_url: str | list[str] | None = None  # openai backend: one server, or several (URL1,URL2 or a list)
    api_key: str | None = None
    # openai backend: where the key comes from when api_key is unset ($OPENAI_API_KEY otherwise), and retries
    api_key_file: str | None = None
    max_retries: int = 5  # retries of a failed request (connection error, timeout, 429, 5xx, a broken answer)
    retry_delay: float = 0.5  # first backoff in seconds; doubles per retry, with jitter
    # seconds to wait for an answer to one HTTP request (a whole completion: raise it for long generations), to
    # connect, and how many times a request that timed out is retried: a server that accepts a request and never
    # answers costs a problem at most (timeout_retries + 1) x request_timeout
    request_timeout: Annotated[float, Field(gt=0)] = 300.0
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    timeout_retries: Annotated[int, Field(ge=0)] = 1
    # openai backend: more fields for every completion request; they win over the neutral sampling
    # settings sent by default (models/served.py), e.g. {"repeat_penalty": 1.1}
    extra_body: dict = field(default_factory=dict)
    tokenizer: str | None = None  # openai backend: a folder, hub id or .gguf file whose chat template to use
    n_params: int | None = None  # parameter count for FLOPs estimates, where the weights cannot say (openai)
    # llamacpp backend: MiB of KV cache for all its streams, live and cached (more: more prompts stay cached),
    # and whether generated tokens' KV is cached too (faster tree search; results then differ in the last bits)
    kv_cache_mib: Annotated[int, Field(ge=1)] = 2048
    reuse_generated_kv: bool = False
    # llamacpp backend: llama.cpp's AMX weight buffers: auto (probed where the CPU advertises AMX), on or off
    amx: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = "auto"
    # vllm backend: GPUs per model copy, model copies, and any other keyword of vLLM's AsyncEngineArgs
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    data_parallel_size: Annotated[int, Field(ge=1)] = 1
    engine_args: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("kv_cache_mib", "reuse_generated_kv"):  # read from `extra` before they were fields
            if key in self.extra:
                extra = dict(self.extra)
                setattr(self, key, type(getattr(self, key))(extra.pop(key)))
                self.extra = extra
