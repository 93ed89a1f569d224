"""Turn a benchmark problem into chat messages: instruction, optional worked examples, the problem."""

from __future__ import annotations

import re

from inferencekit.datasets import Dataset, Sample
from inferencekit.models.base import Message

DEFAULT_TEMPLATE = (
    "Solve the following math problem step by step. Separate the steps with blank lines, and put "
    "your final answer within \\boxed{{}}.\n\n{input}"
)


def build_messages(
    sample: Sample, dataset: Dataset, system_prompt: str | None = None, template: str | None = None
) -> list[Message]:
    """Messages for one problem; each worked example of `dataset.shots` becomes a user/assistant pair."""
    template = template or DEFAULT_TEMPLATE
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    for shot in dataset.shots:
        messages.append({"role": "user", "content": template.format(input=shot.input)})
        messages.append({"role": "assistant", "content": worked_answer(shot)})
    messages.append({"role": "user", "content": template.format(input=sample.input)})
    return messages


def worked_answer(shot: Sample) -> str:
    """A worked example's solution, ending in a boxed answer (GSM8K's '#### n' and <<calc>> marks removed)."""
    solution = str(shot.meta.get("solution") or "")
    steps = re.sub(r"<<[^>]*>>", "", solution.split("####")[0]).strip()
    steps = "\n\n".join(line.strip() for line in steps.splitlines() if line.strip())
    return f"{steps}\n\nThe final answer is \\boxed{{{shot.reference}}}." if steps else f"\\boxed{{{shot.reference}}}"
