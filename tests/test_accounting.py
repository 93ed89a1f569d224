"""Compute accounting: per-candidate and per-problem cost, parameter counts, FLOPs, and the FLOPs plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from inferencekit.results.accounting import attach_costs, flops, gguf_parameters
from inferencekit.results.records import CandidateRecord, Record

COST_KEYS = {"seconds", "calls", "prompt_tokens", "computed_prompt_tokens", "completion_tokens", "generator_flops",
             "flops"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferencekit.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_gguf_parameter_count_matches_llama_cpp(embedded_gguf):
    import llama_cpp

    count = gguf_parameters(embedded_gguf)
    llm = llama_cpp.Llama(model_path=str(embedded_gguf), n_ctx=64, verbose=False)
    try:
        assert count == llama_cpp.llama_model_n_params(llm.model)
    finally:
        llm.close()
    from inferencekit.models import load_generator, resolve_model

    generator = load_generator(resolve_model(str(embedded_gguf)))
    try:
        assert generator.parameter_count() == count
    finally:
        generator.close()


def test_costs_split_among_candidates_sum_to_the_problem():
    record = Record(0, candidates=[CandidateRecord("a", tokens=10), CandidateRecord("b", tokens=30)],
                    usage={"seconds": 2.0, "calls": 1, "prompt_tokens": 100, "computed_prompt_tokens": 50,
                           "completion_tokens": 60, "reward_calls": 1, "reward_prompt_tokens": 80})
    attach_costs(record, generator_params=1000, reward_params=10)
    usage = record.usage
    assert usage["generator_flops"] == 2 * 1000 * (50 + 60) and usage["reward_flops"] == 2 * 10 * 80
    assert usage["flops"] == usage["generator_flops"] + usage["reward_flops"]
    a, b = (c.usage for c in record.candidates)
    assert a["completion_tokens"] == 10 + 10 and b["completion_tokens"] == 30 + 10  # 20 pruned tokens shared
    for key in ("seconds", "prompt_tokens", "computed_prompt_tokens", "completion_tokens", "reward_prompt_tokens",
                "flops", "generator_flops", "reward_flops"):
        assert a[key] + b[key] == pytest.approx(usage[key]), key
    assert flops({"completion_tokens": 5}, None, None) == {}  # unknown parameter count: no guess


def test_a_run_carries_its_cost_and_the_report_plots_flops(tmp_path):
    result = cli("run", "--limit", "2", "--method", "best_of_n", "--n", "2", "--temperature", "0.8",
                 "--max-new-tokens", "16", "--no-progress", "--work-dir", str(tmp_path / "w"))
    assert result.returncode == 0, result.stderr
    assert "FLOPs" in result.stdout
    (path,) = (tmp_path / "w").glob("*/*+*+*")
    rows = [json.loads(x) for x in (path / "predictions.jsonl").read_text().splitlines()]
    n_params = json.loads((path / "provenance.json").read_text())["model"]["n_params"]
    for row in rows:
        usage = row["usage"]
        assert COST_KEYS <= set(usage)
        assert usage["generator_flops"] == 2 * n_params * (usage["computed_prompt_tokens"] + usage["completion_tokens"])
        for cand in row["candidates"]:
            assert COST_KEYS <= set(cand["usage"]) and cand["finish_reason"] in ("stop", "length")
            assert cand["unclosed_think"] is False
        assert sum(c["usage"]["flops"] for c in row["candidates"]) == pytest.approx(usage["flops"])
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["usage"]["flops"] == pytest.approx(sum(r["usage"]["flops"] for r in rows))
    assert metrics["compute"]["flops_per_problem"] == pytest.approx(metrics["usage"]["flops"] / 2)
    assert set(metrics["health"]) >= {"truncated_rate", "unclosed_think_rate", "no_answer_rate", "failed_samples"}
    report = cli("report", str(path), "--out", str(tmp_path / "rep"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "rep" / "accuracy_vs_flops.png").read_bytes().startswith(b"\x89PNG")
    header = (tmp_path / "rep" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"flops_per_problem", "truncation_rate", "unclosed_think_rate", "no_answer_rate", "failed"} <= set(header)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "FLOPs / problem" in page and "ended by" in page


def test_openai_parameter_count_only_when_given():
    from inferencekit.models import resolve_model
    from inferencekit.results.accounting import generator_parameters

    spec = resolve_model("served", backend="openai", model_args={"base_url": "http://127.0.0.1:9/v1"})
    assert generator_parameters(spec) is None
    spec = resolve_model("served", backend="openai", model_args={"base_url": "http://127.0.0.1:9/v1",
                                                                  "n_params": 7_000_000_000})
    assert generator_parameters(spec) == 7_000_000_000


def test_parameter_counts_read_declared_members(embedded_gguf):
    """`results/` asks the models what they declare (`spec`, `parameter_count()`, `uses_policy_model`): a
    generator built in code has no spec and says its own count; a judge scores with the policy's parameters."""
    from inferencekit.models import resolve_model
    from inferencekit.models.base import Generator
    from inferencekit.results.accounting import parameter_counts
    from inferencekit.results.environment import engine_settings
    from inferencekit.reward_models import load_reward_model
    from test_reward_models import FakeGenerator

    class Counted(FakeGenerator):
        def parameter_count(self) -> int:
            return 1234

    gen = Counted()
    assert gen.spec is None and Generator.engine_settings(gen) == {}
    judge = load_reward_model("llm_judge", generator=gen)
    assert judge.parameter_count() is None and judge.uses_policy_model
    assert parameter_counts(gen, judge) == (1234, 1234)
    assert parameter_counts(FakeGenerator()) == (None, None)
    spec = resolve_model(str(embedded_gguf), model_args={"n_threads": 1})
    assert engine_settings(spec, gen) == {"dtype": "auto", "n_ctx": spec.n_ctx, "n_threads": 1,
                                          "max_batch_sequences": spec.max_batch_sequences}
    assert parameter_counts(type("Loaded", (Counted,), {"spec": spec})())[0] == 1234  # the engine's own count
    # a llama.cpp model that runs elsewhere (its engine here cannot tell): the GGUF header's count
    assert parameter_counts(type("Remote", (FakeGenerator,), {"spec": spec})())[0] == gguf_parameters(embedded_gguf)



def test_runner_records_declared_search_work_and_reward_usage():
    """A problem's usage: the method's declared `generated_tokens` count (pruned work), and reward_* keys only
    when there is a reward model, filled from the problem's own usage account."""
    from inferencekit.config import RunConfig
    from inferencekit.models.base import Usage
    from inferencekit.runner import _solve
    from inferencekit.search import Candidate, Problem, SearchMethod, SearchResult
    from inferencekit.session import SharedClock

    class Scorer:  # a reward model: `bind(account)` gives a view counting its work in that account
        account = None

        def bind(self, account):
            bound = Scorer()
            bound.account = account
            return bound

        def score(self):
            self.account.reward_model.add(Usage(calls=2, prompt_tokens=30))

    class Pruning(SearchMethod):
        def search(self, problem):
            if self.reward_model is not None:
                self.reward_model.score()
            # 99 tokens generated, most of them in pruned branches
            return SearchResult([Candidate("a", tokens=5), Candidate("b", tokens=7)], generated_tokens=99)

    class Plain(Pruning):
        def search(self, problem):
            return SearchResult([Candidate("a", tokens=5), Candidate("b", tokens=7)])

    problem = Problem(0, "q", "p", 0)
    config = RunConfig()
    usage = _solve(Pruning(config, None, None), problem, SharedClock()).usage
    assert usage["completion_tokens"] == 99 and not any(k.startswith("reward_") for k in usage)
    assert _solve(Plain(config, None, None), problem, SharedClock()).usage["completion_tokens"] == 12
    method = Pruning(config, None, Scorer())
    usage = _solve(method, problem, SharedClock()).usage
    assert usage["reward_calls"] == 2 and usage["reward_prompt_tokens"] == 30
    assert method.reward_model.account is None  # the problem's binding does not leak into the shared method
