"""Tiny random checkpoints built offline for tests, saved like real ones and loaded the same way."""

from __future__ import annotations

from pathlib import Path

from inferencekit.models.embedded import embedded_gguf_path


def make_tokenizer(directory: str | Path):
    """Save SmolLM2's real tokenizer (with its chat template), taken from the embedded GGUF, to `directory`."""
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def make_tiny_llama(directory: str | Path, seed: int = 0, tokenizer=None, **config_overrides) -> Path:
    """Save a 2-layer random Llama with SmolLM2's tokenizer to `directory`; return the folder.

    Pass an already built `tokenizer` to skip reading the GGUF again.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = make_tokenizer(directory)
    else:
        tokenizer.save_pretrained(str(directory))
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.3,  # larger than usual so that greedy text varies instead of repeating a token
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings.update(config_overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings)).eval()
    model.save_pretrained(str(directory))
    return directory


def make_tiny_prm(directory: str | Path, tokenizer, kind: str = "token_classification", seed: int = 0) -> Path:
    """Save a tiny random process reward model laid out like a real one; return the folder.

    `kind`: "token_classification" (a 2-label Llama token classifier, as TRL trains) or "math_shepherd"
    (a causal Llama with the ` ки` step tag added to the vocabulary). `tokenizer` is copied, not changed.
    """
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForTokenClassification

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = copy.deepcopy(tokenizer)
    if kind == "math_shepherd":
        tokenizer.add_tokens(["ки"])
        cls, extra = LlamaForCausalLM, {}
    elif kind == "token_classification":
        cls, extra = LlamaForTokenClassification, {"num_labels": 2}
    else:
        raise ValueError(f"unknown tiny PRM kind {kind!r}")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, **extra,
    )
    torch.manual_seed(seed)
    cls(config).eval().save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory
