"""Token-level beam search over the model's top-k next tokens, optionally re-ranked by a reward model.

N = `n`, M = `beam_width`. Each round every live beam is continued by each of its M likeliest next
tokens (one generator call for all beams of all problems, asking for top-k log-probabilities), and
the best N/M children by summed log-probability go on (fewer as the pool fills, as `--beam-pool best` of
beam_search). N must be a multiple of M (refused otherwise, rather than floored).
With a reward model, every `token_beam_chunk` tokens the children are ranked by its score of the
partial solution (its last step's score) instead. Finished paths (EOS, a stop string, a final
`\\boxed{}`, the token cap) go to the pool; a problem stops at N finished paths. The pool is ranked by
the reward model when there is one, else by log-probability per token. `filter_duplicates` drops
repeated texts; `max_steps` and `lookahead` do not apply. Paths are text: each round re-tokenises the
prompt plus the path, which the backends' prefix caches make cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from inferencekit.search.base import Problem, SearchResult, register_method
from inferencekit.search.options import MAX_TOKENS, MethodOptions
from inferencekit.search.tree import Node, TreeSearch, next_beams, rank, require_multiple

if TYPE_CHECKING:
    from inferencekit.config import RunConfig


class Options(MethodOptions):
    token_beam_chunk: int = Field(16, ge=1, le=MAX_TOKENS, description="reward re-rank every K tokens (default 16)")


@register_method("token_beam")
class TokenBeam(TreeSearch):
    """Token-level beam search: keep the N/M likeliest paths, extend each by its M likeliest tokens."""

    needs_reward_model = False
    samples = False
    Options = Options

    @classmethod
    def check(cls, config: RunConfig) -> None:
        require_multiple(config.n, config.beam_width, "token_beam keeps N/M beams of M next tokens each")

    def search(self, problem: Problem) -> SearchResult:
        # imported on use: grading loads sympy (seconds), and the config imports every method
        from inferencekit.voting import aggregate

        n = self.config.n
        m = min(self.config.beam_width, n)
        pool: list[Node] = []
        tree = self.tree(problem)
        beams = [tree.root]
        while beams:
            kids = [kid for grown in tree.expand_tokens(beams, m) for kid in grown]
            for kid in kids:
                kid.score = kid.logprob
            if self.reward_model is not None:
                tree.score([k for k in kids if k.tokens % self.config.token_beam_chunk == 0], "last")
            beams = next_beams(pool, kids, n, m, self.config.filter_duplicates)
        if self.reward_model is not None:
            tree.score(pool)  # those not scored on the way
        for node in pool:
            node.score = (aggregate(node.step_scores, self.config.aggregation) if self.reward_model is not None
                          else node.logprob / max(1, node.tokens))
        return SearchResult([tree.to_candidate(node, logprob=round(node.logprob, 4)) for node in rank(pool)[:n]],
                            tree.generated)
