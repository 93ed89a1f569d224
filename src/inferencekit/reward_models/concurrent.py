"""A reward model shared by many concurrent searches: their `score` calls are gathered into batched calls.

The runner keeps many problems in flight, each scoring its own few nodes at a time. Wrapped in a
`SharedRewardModel`, calls arriving while the model is busy are merged into its next call, so one
problem's scoring overlaps another's generation and the model still sees large batches. The model is
only ever called by one thread at a time (formats may keep per-call state). A view bound to a usage
account (`bind(account)`, the runner's per problem) sends the account with each request as data, and the
caller's share of the work (by items scored) goes to it, so per-problem usage stays exact.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict

from inferencekit.coalesce import Coalescer
from inferencekit.models.base import Timer, Usage, UsageAccount
from inferencekit.reward_models.base import RewardModel, ScoreItem

_Request = tuple[list[str], list[list[str]], list[str] | None, UsageAccount | None]


class SharedRewardModel(RewardModel):
    """`reward_model` behind a gatherer: a `RewardModel` whose `score` is safe from many threads.

    Every other declared member is the wrapped model's: its settings, name, step separator, format, `usage`
    (the work is counted there), parameter count and `close`. It loads nothing itself.
    """

    def __init__(self, reward_model: RewardModel, max_items: int | None = None) -> None:
        self.inner = reward_model
        self.settings = reward_model.settings
        self.name = reward_model.name
        self.step_separator = reward_model.step_separator
        self.format_name = reward_model.format_name
        self.needs_weights = reward_model.needs_weights
        self.uses_prompts = reward_model.uses_prompts
        self.account: UsageAccount | None = None  # where a bound view's callers' work is counted
        self._gather: Coalescer[_Request, list[list[list[float]]]] = Coalescer(self._score_many, max_items)

    @property  # type: ignore[override]
    def usage(self) -> Usage:
        return self.inner.usage

    def parameter_count(self) -> int | None:
        return self.inner.parameter_count()

    def score_items(self, items: list[ScoreItem]) -> list[list[float]]:
        """The wrapped model's, unbatched (`score` is the shared entry point)."""
        return self.inner.score_items(items)

    def close(self) -> None:
        self.inner.close()

    def bind(self, account: UsageAccount | None) -> SharedRewardModel:
        """A view sharing this batcher whose calls' work is counted in `account.reward_model` too."""
        bound = copy.copy(self)
        bound.account = account
        return bound

    def score(
        self, questions: Sequence[str], solutions: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
    ) -> list[list[list[float]]]:
        """As the wrapped model's `score`, batched with whatever other threads ask at the same time."""
        if isinstance(questions, str) or len(questions) != len(solutions):
            raise ValueError(f"got {len(questions)} questions and {len(solutions)} solution lists")
        request = (list(questions), [list(s) for s in solutions], None if prompts is None else list(prompts),
                   self.account)
        return self._gather(request)

    def _score_many(self, requests: list[_Request]) -> list[list[list[list[float]]]]:
        """One call of the wrapped model for all requests (those with and without prompts apart)."""
        results: list[list[list[list[float]]] | None] = [None] * len(requests)
        for with_prompts in (True, False):
            part = [i for i, r in enumerate(requests) if (r[2] is not None) == with_prompts]
            if not part:
                continue
            questions = [q for i in part for q in requests[i][0]]
            solutions = [s for i in part for s in requests[i][1]]
            prompts = [p for i in part for p in requests[i][2]] if with_prompts else None
            before = self.inner.usage.copy()  # every reward model keeps its `usage` (RewardModel)
            with Timer() as timer:
                scores = self.inner.score(questions, solutions, prompts=prompts)
            at = 0
            for i in part:
                k = len(requests[i][0])
                results[i] = scores[at : at + k]
                at += k
            work = self.inner.usage.since(before)
            work.seconds = timer.seconds
            _share(work, [(requests[i][3], sum(len(s) for s in requests[i][1])) for i in part])
        return results  # type: ignore[return-value]


RewardModel.batcher = SharedRewardModel  # see `RewardModel.batcher`


def _share(work: Usage, parts: list[tuple[UsageAccount | None, int]]) -> None:
    """Split one call's work among its callers' accounts in proportion to their items."""
    total = sum(n for _, n in parts) or 1
    for account, n in parts:
        if account is not None:
            account.reward_model.add(Usage(**{k: v * n / total for k, v in asdict(work).items()}))
