"""The AMX probe (amx.py runs it in a subprocess): `python -m inferencekit.models.llamacpp.amx_probe MODEL.gguf`
prints "ok" and exits 0 when a decode with llama.cpp's default model parameters runs; a faulty AMX kills it."""

from __future__ import annotations

import sys
from pathlib import Path


def main(path: str) -> None:
    """Load `path` with llama.cpp's default model parameters and decode a prompt and one more token."""
    import llama_cpp as lc
    import numpy as np

    from inferencekit.models.llamacpp.gguf import GGUFModel

    model = GGUFModel(Path(path))
    cp = lc.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = 64
    cp.n_threads = cp.n_threads_batch = 2
    ctx = lc.llama_init_from_model(model.model, cp)
    if not ctx:
        sys.exit("llama.cpp could not create a context")
    tokens = model.tokenize("Natalia sold clips to 48 of her friends in April.", add_bos=True)
    for _ in range(2):  # the prompt (many tokens at once), then one generated token
        ids = (lc.llama_token * len(tokens))(*tokens)  # referenced until the decode is done
        batch = lc.llama_batch_get_one(ids, len(tokens))
        if lc.llama_decode(ctx, batch) != 0:
            sys.exit("llama_decode failed")
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, -1), shape=(model.n_vocab,))
        tokens = [int(np.argmax(logits))]
    lc.llama_free(ctx)
    model.close()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
