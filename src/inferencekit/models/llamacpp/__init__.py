"""llama.cpp backend: one decode loop, continuously batching every pending request, through llama.cpp's batch API.

Modules: `gguf` (finding the file; tokenizer, token pieces, chat template), `sampler` (the pure sampler:
logits, settings and a random generator in, a token out), `kv_cache` (the prefix cache over KV streams),
`decode_loop` (the thread that owns the llama.cpp context) and `generator` (`LlamaCppGenerator`, the
`Generator` interface).

Callers (`submit` from any thread) hand requests to one thread that owns the llama.cpp context; its inbox is
the engine's scheduler (admission per decode step), not a batcher in front of the engine, so it is not
`inferencekit.coalesce`'s. At every step it admits waiting prompts into free sequences while
`max_batch_sequences` allows (each prompt evaluated once and its KV cache copied with
`llama_memory_seq_cp` to its samples), advances every live sequence one token in one `llama_decode`,
and retires finished ones, waking their callers: continuous batching, so the engine stays full while
work waits, and many problems' searches share every step. Sampling is done in numpy: sample `j`
of a prompt draws only from `np.random.default_rng([seed, j])`, whatever else shares the batch.

Results are bit-identical whatever else shares the batch, whenever it was admitted, and
whether a prompt prefix came from the cache (the tests check this). That rules out three llama.cpp
settings, each of which changes a sequence's logits in the last bits, which this quantised model turns
into other tokens: a unified KV cache (the cell layout among other sequences changes the order of the
attention sums), CPU flash attention, and a sequence with a single token in a multi-token ubatch
(computed with other kernels). So each sequence has its own KV stream (`kv_unified=False`), flash
attention is off, and prompts are decoded one at a time in chunks of two tokens or more. Separate
streams also spare each query the other sequences' cells. Their cost is memory: each sequence reserves
a whole stream, so the context is sized to the calls' needs within `kv_cache_mib` (a model argument,
default 2048), and sharing a prompt copies a stream (cheap next to decoding).

Streams stay cached after a call: a later prompt that starts with a cached prompt computes only the
rest (counted in `computed_prompt_tokens`), as tree search needs. So there may be more streams than
`max_batch_sequences`, which bounds only how many sequences decode together: a tree search round's
prompts, and the paths `score_text` read last round, stay cached side by side. The model argument
`reuse_generated_kv=true` also reuses what generation computed: generated tokens' KV (a tree search's next
prompt), and the self-certainty of the distributions they were drawn from (`certainty_text` of a just-generated
text, or of a path of generated steps, then computes nothing: the draws are found by the text they spell, and a
text read back that tokenises otherwise, such as a step's separator drawn as two newlines and read as one token,
gets the draws' values, one per drawn token). Faster for tree search and self-certainty, but those were computed
one token at a time, so results then differ from computing the same text as a prompt (in the last bits of a logit,
which this quantised model can turn into other tokens; self-certainty values by up to a few percent a token).
"""

from inferencekit.models.llamacpp.generator import LlamaCppGenerator
from inferencekit.models.llamacpp.gguf import resolve_gguf

__all__ = ["LlamaCppGenerator", "resolve_gguf"]
