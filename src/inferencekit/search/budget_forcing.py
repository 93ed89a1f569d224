"""Budget forcing for reasoning models (s1, Muennighoff et al. 2025, arXiv 2501.19393).

`n` independent chains per problem (1: one forced trace; more: vote over them). Each chain thinks
between the model's thinking delimiters (`thinking_delimiters`, from the model preset or
`--thinking-delimiters "<think>,</think>"`; the open delimiter is appended to the prompt unless the
prompt already ends with it), with a thinking budget T (`thinking_budget`, default `max_new_tokens`):
- a segment is generated with at most `remaining` new tokens, stopping at the close delimiter (or
  EOS); then `remaining -= tokens generated` (s1's bookkeeping: only generated tokens count, the
  appended "Wait" does not; no segment is asked for once nothing remains);
- an early end of thinking, while budget remains and fewer than `wait` "Wait"s were appended (and,
  with `min_thinking`, fewer thinking tokens than that), is suppressed: "Wait" is appended to the
  thinking text and thinking continues;
- then the segment is closed with the close delimiter. When the budget ran out (the last segment hit
  its cap), the final-answer cue FINAL_ANSWER follows (s1's early exit); otherwise the model answers
  after the delimiter on its own. The answer has at most `max_new_tokens` tokens.
The candidate's text is what followed the prompt (the open delimiter when appended, the thinking, the
close delimiter, any cue, the answer); `meta` holds thinking tokens, "Wait"s and whether the budget forced
the end. Sampling seeds come from the problem's seed, the chain and the segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from inferencekit.errors import UserError
from inferencekit.search.base import Candidate, Problem, SearchMethod, SearchResult, register_method
from inferencekit.search.options import MAX_STEPS, MAX_TOKENS, MethodOptions
from inferencekit.search.samples import score_if_asked
from inferencekit.search.tree import node_seed

WAIT = "Wait"
FINAL_ANSWER = "\n\nFinal Answer:"


class Options(MethodOptions):
    thinking_budget: int | None = Field(None, ge=1, le=MAX_TOKENS,
                                        description="most thinking tokens (default max-new-tokens)")
    min_thinking: int | None = Field(None, ge=1, le=MAX_TOKENS,
                                     description='append "Wait" while thinking is shorter')
    wait: int | None = Field(None, ge=0, le=MAX_STEPS,
                             description='most "Wait"s appended (default 0; unlimited with --min-thinking)')
    # [open, close], e.g. ["<think>", "</think>"]; model presets set it
    thinking_delimiters: list[str] | None = Field(
        None, description='"OPEN,CLOSE", e.g. "<think>,</think>" (default: the model preset\'s)')

    @field_validator("thinking_delimiters", mode="before")
    @classmethod
    def _two_delimiters(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if value is not None and (len(value) != 2 or not all(value)):
            raise ValueError('must be two non-empty strings, open and close, e.g. "<think>,</think>"')
        return value


@dataclass
class Chain:
    index: int
    head: str  # the prompt plus the open delimiter
    opened: str  # the open delimiter when this method appended it, else ""
    remaining: int
    thinking: str = ""
    thought: int = 0  # thinking tokens generated
    waits: int = 0
    segments: int = 0
    forced: bool = False


@register_method("budget_forcing")
class BudgetForcing(SearchMethod):
    """s1 budget forcing: cap the thinking at a token budget; suppress an early end with "Wait"."""

    Options = Options

    def search(self, problem: Problem) -> SearchResult:
        c = self.config
        if not c.thinking_delimiters:
            raise UserError('budget_forcing needs the model\'s thinking delimiters: the model preset names none; '
                            'give --thinking-delimiters "<think>,</think>"')
        open_, close = c.thinking_delimiters
        max_waits = c.wait if c.wait is not None else (math.inf if c.min_thinking else 0)
        opened = "" if problem.prompt.rstrip().endswith(open_) else open_
        chains = [Chain(j, problem.prompt + opened, opened, c.thinking_budget or c.max_new_tokens) for j in range(c.n)]
        live = chains
        while live:
            outs = self.generator.generate(
                [ch.head + ch.thinking for ch in live],
                [self.sampling_params(node_seed(problem.seed, (ch.index, ch.segments)), n=1,
                                      max_new_tokens=ch.remaining, stop=(close, *c.stop)) for ch in live])
            going = []
            for ch, (out,) in zip(live, outs, strict=True):
                ch.thinking += out.text
                ch.thought += out.tokens
                ch.remaining -= out.tokens
                ch.segments += 1
                ch.forced = out.finish_reason == "length"
                short = c.min_thinking is None or ch.thought < c.min_thinking
                if not ch.forced and ch.remaining > 0 and ch.waits < max_waits and short and out.tokens > 0:
                    ch.thinking += WAIT
                    ch.waits += 1
                    going.append(ch)
            live = going
        tails = [close + (FINAL_ANSWER if ch.forced else "") for ch in chains]
        outs = self.generator.generate([ch.head + ch.thinking + tail for ch, tail in zip(chains, tails, strict=True)],
                                       [self.sampling_params(node_seed(problem.seed, (ch.index, -1)), n=1)
                                        for ch in chains])
        cands = [Candidate(text=ch.opened + ch.thinking + tail + out.text, tokens=ch.thought + out.tokens,
                           finish_reason=out.finish_reason,
                           meta={"thinking_tokens": ch.thought, "waits": ch.waits, "forced_end": ch.forced})
                 for ch, tail, (out,) in zip(chains, tails, outs, strict=True)]
        score_if_asked(self.reward_model, problem, cands)
        return SearchResult(cands)
