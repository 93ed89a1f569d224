"""Shared fixtures: tiny random checkpoints and the embedded GGUF, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferencekit.models.embedded import embedded_gguf_path
from tiny_models import make_tiny_llama

# Settings a user's shell may hold that would change what the tests see (data, presets, servers).
_USER_ENVIRONMENT = ("INFERENCEKIT_DATA_DIR", "INFERENCEKIT_PRESETS", "OPENAI_BASE_URL", "OPENAI_API_KEY")


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    """The tests' own inferencekit cache (hashes, dequantised GGUF copies): never the user's."""
    return tmp_path_factory.mktemp("inferencekit-cache")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, _session_cache: Path) -> None:
    """Every test starts from the same environment, whatever the shell that runs pytest holds."""
    for name in _USER_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("INFERENCEKIT_CACHE_DIR", str(_session_cache))


@pytest.fixture(scope="session", autouse=True)
def _llama_cpp_safe_where_amx_is_faulty(_session_cache: Path) -> None:
    """Direct `llama_cpp.Llama(...)` calls in tests load without AMX buffers where they would crash (amx_safe.py)."""
    import os

    from amx_safe import apply

    before = os.environ.get("INFERENCEKIT_CACHE_DIR")
    os.environ["INFERENCEKIT_CACHE_DIR"] = str(_session_cache)
    try:
        apply()
    finally:
        if before is None:
            os.environ.pop("INFERENCEKIT_CACHE_DIR")
        else:
            os.environ["INFERENCEKIT_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def embedded_gguf() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct Q4_1 GGUF file."""
    return embedded_gguf_path()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A saved 2-layer random Llama with SmolLM2's tokenizer and chat template."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_prm_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """A saved tiny random token-classification PRM with SmolLM2's tokenizer."""
    from transformers import AutoTokenizer

    from tiny_models import make_tiny_prm

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    return make_tiny_prm(tmp_path_factory.mktemp("tiny_prm"), tokenizer)
