"""Token-level beam search, by chunks of K tokens, re-ranked by the reward model every chunk.

This is chunk-level, not per-token search over the model's top-k token log-probabilities: the
generator interface has no call returning top-k logprobs of the next token. Each round every live
beam samples M continuations of `token_beam_chunk` tokens (no step-separator stop), the reward
model scores each partial solution and ranks it by its last step's score (for a PRM, the value of the
prefix), and the best N/M beams go on. Otherwise it is `beam_search` (same loop and stopping rules;
`max_steps` counts chunks; `lookahead` does not apply).
"""

from __future__ import annotations

from collections.abc import Sequence

from inferencekit.search.base import register_method
from inferencekit.search.beam_search import BeamSearch
from inferencekit.search.tree import Node


@register_method("token_beam")
class TokenBeam(BeamSearch):
    """Token-level beam search over chunks of K tokens (chunk-level, not top-k logprobs), reward-ranked."""

    rank_aggregation = "last"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunk = self.config.token_beam_chunk

    def lookahead(self, problems: Sequence, nodes: Sequence[Node]) -> None:
        """No step lookahead at token level."""
