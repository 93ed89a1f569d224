"""What every reward model shares: settings, format options, step splitting and the `score` entry point.

A format class implements `score_items` on a flat list of `ScoreItem`s (a question, a solution's steps and,
for formats that read it, the policy's prompt); `score` splits the solutions into steps and puts the flat
scores back into the per-question nesting users see.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from inferencekit.errors import UserError, first_line, validation_message
from inferencekit.models.base import Generator, Usage, UsageAccount


@dataclass
class RewardModelSettings:
    """Format-independent settings of a loaded reward model (see `load_reward_model`).

    `name`, `path`, `step_separator` and `generator` come from the run (the resolved name, the model's
    step separator, its generator); the others (`USER_KEYS`) are the user's, e.g. `--reward-model-arg
    max_tokens_per_batch=4096`, and are validated by `validate`.
    """

    __pydantic_config__ = ConfigDict(arbitrary_types_allowed=True)

    name: str
    path: str | None = None
    step_separator: str = "\n\n"
    generator: Generator | None = None
    trust_remote_code: bool = False
    device: str | None = None
    dtype: str = "auto"
    max_tokens_per_batch: int = Field(8192, ge=1)
    max_length: int | None = Field(None, ge=1)

    USER_KEYS: ClassVar[tuple[str, ...]] = ("trust_remote_code", "device", "dtype", "max_tokens_per_batch",
                                            "max_length")

    @classmethod
    def validate(cls, **values: Any) -> RewardModelSettings:
        """Settings from keyword values, each checked against its type and range; `UserError` in one line."""
        try:
            return TypeAdapter(cls).validate_python(values)
        except ValidationError as exc:
            raise UserError(validation_message(exc, "reward model argument", cls.USER_KEYS)) from None


@dataclass(frozen=True)
class ScoreItem:
    """One solution to score: its question, its steps, and the policy's prompt for the question where the
    caller gave it and the format reads it (`RewardModel.uses_prompts`; else None)."""

    question: str
    steps: list[str]
    prompt: str | None = None


def split_steps(solution: str, separator: str) -> list[str]:
    """The steps of a solution: its pieces between separators, whitespace-only pieces dropped."""
    return [piece for piece in solution.split(separator) if piece.strip()]


class RewardModel(ABC):
    """A reward model scoring each step of each solution.

    Subclasses are registered with `@register_format(name)`, take their format options as keyword
    parameters (with defaults) of `configure`, and implement `score_items`. `usage` accumulates the
    work of every `score` call (a format scoring through a generator counts that work here, not as
    generation); the runner reads each problem's share of it.
    """

    usage: Usage

    format_name: ClassVar[str] = ""
    needs_weights: ClassVar[bool] = True  # False: works from a generator alone (name = format name)
    # True: `score(..., prompts=)` hands the policy's prompts to `score_items` (each step is read after it);
    # False: they are dropped there (the format scores the question in its own layout: a PRM's template, a
    # judge's instruction)
    uses_prompts: ClassVar[bool] = False

    def __init__(self, settings: RewardModelSettings, **options: Any) -> None:
        self.settings = settings
        self.name = settings.name
        self.step_separator = settings.step_separator
        self.usage = Usage()
        options = self.check_options(options)
        self.load()
        self.configure(**options)

    @classmethod
    def option_names(cls) -> list[str]:
        """Names of this format's options (keyword parameters of `configure`)."""
        params = inspect.signature(cls.configure).parameters
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return [name for name, p in params.items() if name != "self" and p.kind in kinds]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """`options` unchanged, or `UserError` naming the accepted ones (the settings' keys beside them)."""
        accepted = cls.option_names()
        bad = sorted(set(options) - set(accepted))
        if bad:
            raise UserError(
                f"unknown option(s) {', '.join(bad)} for reward model format {cls.format_name!r}; "
                f"accepted: {', '.join(accepted) or 'none'} (format options), "
                f"{', '.join(('format', *RewardModelSettings.USER_KEYS))} (settings)"
            )
        return options

    @classmethod
    def split_arguments(cls, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A user's reward model arguments split into (settings, format options), the settings validated.

        `format` and `RewardModelSettings.USER_KEYS` are settings; the rest must be options of this
        format (keyword parameters of its `configure`). An unknown key is a `UserError` naming all
        accepted ones.
        """
        settings_keys = ("format", *RewardModelSettings.USER_KEYS)
        settings = {k: v for k, v in arguments.items() if k in settings_keys}
        options = cls.check_options({k: v for k, v in arguments.items() if k not in settings_keys})
        RewardModelSettings.validate(name="check", **{k: v for k, v in settings.items() if k != "format"})
        return settings, options

    @classmethod
    def description(cls) -> str:
        """First line of the class docstring."""
        return first_line(cls.__doc__ or "")

    def parameter_count(self) -> int | None:
        """Parameters of the model this format runs itself (FLOPs estimates); None when it runs none."""
        return None

    @property
    def uses_policy_model(self) -> bool:
        """Whether the policy's generator is at hand to score with (a judge, mean_logprob without a path):
        its work then costs the policy's parameters where the format has none of its own."""
        return self.settings.generator is not None

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load weights (called before `configure`)."""

    def configure(self) -> None:  # noqa: B027 - formats override with their options as keyword parameters
        """Apply format options."""

    def score(
        self, questions: Sequence[str], solutions: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
    ) -> list[list[list[float]]]:
        """Score every step of every solution: one list per question, one per solution, one float per step.

        A solution's steps are its pieces between `step_separator` (whitespace-only pieces dropped);
        a step that got no score (cut off by truncation) is NaN. `prompts`, where the caller knows them,
        are the policy's prompts per question: formats with `uses_prompts` (self_certainty) read the steps
        after them; every other format ignores them and scores the question in its own layout, since a
        PRM or a judge was trained on (or instructed with) that layout, not the policy's.
        """
        if isinstance(questions, str) or len(questions) != len(solutions):
            raise ValueError(f"got {len(questions)} questions and {len(solutions)} solution lists")
        if any(isinstance(sols, str) for sols in solutions):
            raise ValueError("solutions must hold one list of solution texts per question")
        flat = iter(self.score_items(self.score_items_of(questions, solutions, prompts)))
        return [[next(flat) for _ in sols] for sols in solutions]

    def score_items_of(
        self, questions: Sequence[str], solutions: Sequence[Sequence[str]], prompts: Sequence[str] | None
    ) -> list[ScoreItem]:
        """The flat items `score` hands to `score_items`: prompts only to a format that reads them."""
        if prompts is not None and len(prompts) != len(questions):
            raise ValueError(f"got {len(prompts)} prompts for {len(questions)} questions")
        given = list(prompts) if prompts is not None and self.uses_prompts else [None] * len(questions)
        return [
            ScoreItem(question, split_steps(solution, self.step_separator), prompt)
            for question, prompt, sols in zip(questions, given, solutions, strict=True)
            for solution in sols
        ]

    # Wraps a model in its batcher. `reward_models/concurrent.py` (imported by the `inferencekit.reward_models`
    # package before any model is built) installs `SharedRewardModel` here: this module does not import it.
    batcher: ClassVar[Callable[[RewardModel], RewardModel] | None] = None

    def shared(self) -> RewardModel:
        """This model's one batcher (`SharedRewardModel`): concurrent callers' requests scored together."""
        if RewardModel.batcher is None:  # only `reward_models.base` was imported
            raise RuntimeError("import inferencekit.reward_models before sharing a reward model")
        return self.__dict__.setdefault("_shared", RewardModel.batcher(self))  # atomic: one batcher per model

    def bind(self, account: UsageAccount | None) -> RewardModel:
        """A view (through `shared()`) whose calls' work is also counted in `account.reward_model`."""
        return self.shared().bind(account)

    @abstractmethod
    def score_items(self, items: list[ScoreItem]) -> list[list[float]]:
        """Scores of each item, one float per step, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model's memory."""
