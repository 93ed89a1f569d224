"""What every search method shares: the problem it is given, the candidates it returns, a registry."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from inferencekit.models.base import Generator, SamplingParams
from inferencekit.registry import Registry

if TYPE_CHECKING:
    from inferencekit.config import RunConfig
    from inferencekit.reward_models.base import RewardModel


@dataclass
class Problem:
    """A prompt ready for the generator, with the seed its sampling must use."""

    index: int
    question: str
    prompt: str
    seed: int


@dataclass
class Candidate:
    """One finished solution: its text, per-step reward scores (empty without a reward model), tokens.

    Its `answer` is not the search's business: grading extracts it into the stored record.
    """

    text: str
    tokens: int
    step_scores: list[float] = field(default_factory=list)
    finish_reason: str = "stop"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["meta"]:
            del data["meta"]
        return data


class SearchMethod(ABC):
    """Turns a batch of problems into candidates, calling the generator (and reward model) in batches."""

    name: str = "search"
    needs_reward_model: bool = False
    provides_scores: bool = False  # its candidates carry their own step scores (e.g. deepconf's confidence)

    @classmethod
    def check(cls, config: RunConfig) -> None:
        """Refuse settings this method cannot run with (`UserError`, one line); called before any model loads."""
        return None

    def __init__(self, config: RunConfig, generator: Generator, reward_model: RewardModel | None = None) -> None:
        self.check(config)
        self.config = config
        self.generator = generator
        self.reward_model = reward_model
        self._local = threading.local()
        # how the dataset's answers are read (grouping samples by answer): the runner sets the loaded
        # dataset's style; by default the one its name or preset gives
        self.answer_style: str = dataset_style(config.dataset)

    @property
    def generated(self) -> list[int]:
        """Tokens generated per problem by the last `search` in this thread, where the candidates do not show them.

        A method whose work is not all in its candidates' `tokens` (pruned branches, rollouts, discarded
        traces, critique rounds) sets it to one count per problem; empty (the default) means the
        candidates' tokens are the whole count. It is kept per thread, so concurrent searches (the
        runner's problems in flight) count apart. The runner records it as the problem's completion tokens.
        """
        return getattr(self._local, "generated", [])

    @generated.setter
    def generated(self, value: list[int]) -> None:
        self._local.generated = value

    def generated_tokens(self, index: int, candidates: list[Candidate]) -> int:
        """Tokens generated for problem `index` of the last search in this thread (see `generated`)."""
        counts = self.generated
        return counts[index] if counts else sum(c.tokens for c in candidates)

    def sampling_params(self, seed: int, **changes: Any) -> SamplingParams:
        return self.config.sampling_params(seed, **changes)

    @abstractmethod
    def search(self, problems: list[Problem]) -> list[list[Candidate]]:
        """Candidates for each problem, in problem order.

        Called from many threads at once (the runner keeps several problems in flight, each searched
        on its own): per-search state belongs in local variables, or per thread like `TreeSearch.generated`.
        """


def dataset_style(name: str) -> str:
    """The answer style of dataset `name`: its preset's declared style, else what the name says."""
    from inferencekit.errors import UserError
    from inferencekit.grading.style import answer_style
    from inferencekit.presets import load_preset

    try:
        declared = (load_preset("datasets", name) or {}).get("style")
    except (UserError, OSError, ValueError):  # a path or hub id that is no preset name
        declared = None
    return answer_style(name, declared=declared)


METHODS: Registry[type[SearchMethod]] = Registry("method")


def register_method(name: str) -> Callable[[type[SearchMethod]], type[SearchMethod]]:
    """Class decorator: make a `SearchMethod` subclass runnable as `--method name`."""

    def wrap(cls: type[SearchMethod]) -> type[SearchMethod]:
        cls.name = name
        return METHODS.add(name, cls)

    return wrap


def method_names() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> type[SearchMethod]:
    return METHODS.get(name)
