"""Hugging Face transformers backend: a local folder, a hub id, or a GGUF file loaded through transformers.

All prompts x samples of one call run in as few padded batches as `spec.max_batch_sequences` allows,
and calls from many threads at once (the runner's problems in flight) are gathered into one such batch
while the model is busy (`inferencekit.coalesce`, the batcher). A batch's shared prompt prefix is computed
once (`_prefill`); it decodes into a preallocated KV cache, each row leaving the batch when it ends
(`_decode_rows`), or through `model.generate` for a model whose cache is not all plain attention.
Token choice happens in `_RowSampler`, a logits processor that draws each row's token from that row's own
random stream, so a sample depends on its prompt, its seed and its index, never on the batch it sits in.

Modules: `loading` (finding and loading the checkpoint), `sampling` (each row's own random stream),
`prefix_cache` (what rows share, computed once; the preallocated KV cache), `decoding` (one batch of rows
to completions) and `generator` (`HFGenerator`: the `Generator` interface, with the batcher in front).
"""

from inferencekit.models.hf.generator import HFGenerator, _copy
from inferencekit.models.hf.loading import _plain_checkpoint, resolve_source
from inferencekit.models.hf.prefix_cache import _common_prefix
from inferencekit.models.hf.sampling import _RowSampler, row_seed

__all__ = ["HFGenerator", "_RowSampler", "_common_prefix", "_copy", "_plain_checkpoint", "resolve_source", "row_seed"]
