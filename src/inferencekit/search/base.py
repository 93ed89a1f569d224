"""What every search method shares: the problem it is given, the result it returns, a registry."""

from __future__ import annotations

import copy
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from inferencekit.models.base import Generator, SamplingParams
from inferencekit.registry import Registry
from inferencekit.search.options import MethodOptions

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


@dataclass
class SearchResult:
    """What one problem's search gives: its candidates, and every token it generated for them.

    `generated_tokens` counts pruned branches, rollouts, discarded traces and critique rounds too (shared
    prefixes once); left out, it is the candidates' own tokens. The runner records it as the problem's
    completion tokens.
    """

    candidates: list[Candidate]
    generated_tokens: int = -1  # -1: the sum of the candidates' tokens

    def __post_init__(self) -> None:
        if self.generated_tokens < 0:
            self.generated_tokens = sum(c.tokens for c in self.candidates)


class SearchMethod(ABC):
    """Searches one problem for candidates, calling the generator (and reward model).

    The runner searches many problems at once, each in its own thread: per-search state belongs in local
    variables, never on `self`. `bind` gives a copy that calls other models (e.g. bound to one problem's account).
    """

    name: str = "search"
    needs_reward_model: bool = False
    provides_scores: bool = False  # its candidates carry their own step scores (e.g. deepconf's confidence)
    Options: type[MethodOptions] = MethodOptions  # the method's own settings (search/options.py)

    @classmethod
    def check(cls, config: RunConfig) -> None:
        """Refuse settings this method cannot run with (`UserError`, one line); called before any model loads."""
        return None

    def __init__(self, config: RunConfig, generator: Generator, reward_model: RewardModel | None = None) -> None:
        self.check(config)
        self.config = config
        self.generator = generator
        self.reward_model = reward_model
        # how the dataset's answers are read (grouping samples by answer): the runner sets the loaded
        # dataset's style; by default the one its name or preset gives
        self.answer_style: str = dataset_style(config.dataset)

    def bind(self, generator: Generator, reward_model: Any = None) -> SearchMethod:
        """A shallow copy of this method that calls `generator` and `reward_model` (e.g. bound to one problem's
        usage account); the settings are shared."""
        bound = copy.copy(self)
        bound.generator, bound.reward_model = generator, reward_model
        return bound

    def sampling_params(self, seed: int, **changes: Any) -> SamplingParams:
        return self.config.sampling_params(seed, **changes)

    @abstractmethod
    def search(self, problem: Problem) -> SearchResult:
        """The candidates of one problem and the tokens generated for them."""


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
        config = sys.modules.get("inferencekit.config")
        run_config = getattr(config, "RunConfig", None)  # built already: it can no longer take new options
        if run_config is not None and not set(cls.Options.model_fields) <= set(run_config.model_fields):
            raise ValueError(f"method {name!r} declares options after the run config was built: put its module in "
                             "inferencekit/search/ (imported with the package)")
        return METHODS.add(name, cls)

    return wrap


def method_names() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> type[SearchMethod]:
    return METHODS.get(name)
