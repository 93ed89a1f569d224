"""A GGUF model file for the llama.cpp backend: finding it, its weights, tokenizer and chat template."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path

import llama_cpp as lc

from inferencekit.models.base import Cancelled, GeneratorSpec, Message


def resolve_gguf(spec: GeneratorSpec) -> Path:
    """The .gguf file a spec names: `path`, `path/gguf_file`, or the only .gguf inside `path`."""
    path = Path(spec.path).expanduser()
    if spec.gguf_file:
        path = path / spec.gguf_file
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected exactly one .gguf file, found {len(found)}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"GGUF model file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
    return path


_backend_ready = False


def _init_backend() -> None:
    """`llama_backend_init` once per process, as `llama_cpp.Llama` does."""
    global _backend_ready
    if not _backend_ready:
        lc.llama_backend_init()
        _backend_ready = True


def model_params(extra_bufts: bool = True) -> lc.llama_model_params:
    """The model parameters `llama_cpp.Llama(model_path)` loads with; `extra_bufts=False` turns llama.cpp's
    extra buffer types off."""
    params = lc.llama_model_default_params()
    params.n_gpu_layers, params.split_mode, params.main_gpu = 0, lc.LLAMA_SPLIT_MODE_LAYER, 0
    if hasattr(lc, "LLAMA_LOAD_MODE_MMAP"):
        params.load_mode = lc.LLAMA_LOAD_MODE_MMAP
    if not extra_bufts:
        if "use_extra_bufts" not in dict(lc.llama_model_params._fields_):
            raise ValueError("this llama-cpp-python cannot load without extra buffer types (amx=off): upgrade it")
        params.use_extra_bufts = False
    return params


class GGUFModel:
    """Weights, tokenizer and chat template of a GGUF file, loaded with the model parameters `llama_cpp.Llama` uses.

    The model gets no context here: the decode loop makes its own. `label` names the model in errors;
    `chat_template` overrides the file's `tokenizer.chat_template`; `extra_bufts=False` loads without
    llama.cpp's extra buffer types (AMX, weight repacking; see amx.py).
    """

    def __init__(self, path: Path, chat_template: str | None = None, label: str = "", extra_bufts: bool = True) -> None:
        from llama_cpp._internals import LlamaModel  # `Llama` takes no `use_extra_bufts`
        from llama_cpp._logger import set_verbose

        _init_backend()
        set_verbose(False)
        try:
            self.llm = LlamaModel(path_model=str(path), params=model_params(extra_bufts), verbose=False)
        except ValueError as e:
            raise ValueError(f"{path}: llama.cpp could not load this GGUF model") from e
        self.label = label or str(path)
        self.model = self.llm.model
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = self.llm.n_vocab()
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self.bos = lc.llama_vocab_bos(self.vocab)
        self.template = chat_template or self.llm.metadata().get("tokenizer.chat_template")
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        # Requests tokenize from many threads (every other llama.cpp call runs in the decode loop's one thread), and
        # a run that stops closes the model while abandoned problems may still be tokenizing: a freed vocabulary
        # read is a segfault. So the tokenizer's calls take turns with each other and with `close` (each is short
        # next to a decode step; llama.cpp also promises nothing for one object used by several threads at once).
        self._tokenizer_lock = threading.Lock()
        self._closed = False
        self._formatters: dict[bool, object] = {}

    def n_params(self) -> int:
        """Elements of all the model's tensors (llama.cpp's own count)."""
        with self._tokenizer_lock:
            self._check_open()
            return int(lc.llama_model_n_params(self.model))

    def kv_cell_bytes(self) -> int:
        """Bytes one KV cache cell takes (f16 K and V over all layers)."""
        m = self.model
        head_dim = lc.llama_model_n_embd(m) // max(1, lc.llama_model_n_head(m))
        return 4 * lc.llama_model_n_layer(m) * lc.llama_model_n_head_kv(m) * head_dim

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """Tokens of `text` (special-token text as special tokens), BOS first when asked and the model adds one."""
        add_bos = add_bos and self.add_bos
        with self._tokenizer_lock:
            self._check_open()
            tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        if add_bos and len(tokens) > 1 and tokens[0] == tokens[1] == self.bos:
            tokens = tokens[1:]  # the text (a rendered chat template) already starts with BOS
        return tokens

    def piece(self, token: int, special: bool = False) -> bytes:
        """A token's bytes (possibly part of a UTF-8 character); `special` renders control tokens' text."""
        cache = self._special_pieces if special else self._pieces
        piece = cache.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            with self._tokenizer_lock:
                self._check_open()
                n = lc.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
                if n < 0:
                    buf = ctypes.create_string_buffer(-n)
                    n = lc.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
            piece = buf.raw[:n]
            cache[token] = piece
        return piece

    def text(self, tokens: Sequence[int]) -> bytes:
        """The bytes `tokens` spell, control tokens' text included (BOS too): what `tokenize` read, for a text
        tokenised with special tokens."""
        return b"".join([self.piece(t, special=True) for t in tokens])

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends a generation (EOS, EOT, ...)."""
        return bool(lc.llama_vocab_is_eog(self.vocab, token))

    def token_text(self, token: int) -> str:
        """A token's text, "" for an end-of-generation token."""
        return "" if self.is_eog(token) else self.piece(token).decode("utf-8", "replace")

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Render `messages` with the given template or the GGUF's `tokenizer.chat_template`."""
        if not self.template:
            raise ValueError(f"{self.label} has no chat template; set chat_template in the model spec")
        fmt = self._formatters.get(add_generation_prompt)
        if fmt is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            special = (lc.llama_vocab_eos(self.vocab), self.bos)
            eos, bos = (self.piece(t, special=True).decode("utf-8", "replace") if t >= 0 else "" for t in special)
            fmt = Jinja2ChatFormatter(self.template, eos, bos, add_generation_prompt=add_generation_prompt)
            self._formatters[add_generation_prompt] = fmt
        return fmt(messages=list(messages)).prompt

    def close(self) -> None:
        """Free the model; a tokenizer call after this raises `Cancelled` (from an abandoned problem's thread)."""
        with self._tokenizer_lock:
            self._closed = True
            self.llm.close()

    def _check_open(self) -> None:
        if self._closed:
            raise Cancelled(f"{self.label} is closed")
