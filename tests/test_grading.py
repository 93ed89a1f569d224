"""Tests of answer extraction, equivalence and parallel grading (inferencekit.grading)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from inferencekit.grading import (
    Grader,
    answer_style,
    canonical_form,
    extract_all_answers,
    extract_answer,
    extract_candidates,
    grade,
    is_equiv,
)
from inferencekit.grading.equivalence import math_verify_equiv, quick_equiv
from inferencekit.grading.normalize import is_collection

# the shared benchmark files sit beside the checkout (../shared/data), or beside a worktree's parent
_ROOT = Path(__file__).resolve().parents[1]
DATA = next((p for p in (_ROOT.parent / "shared" / "data", _ROOT.parents[1] / "shared" / "data") if p.is_dir()),
            _ROOT.parent / "shared" / "data")

_COL = "\\begin{pmatrix}-2\\\\-14\\\\-7\\end{pmatrix}"
_COL_SPACED = "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}"
_COL_FRACTIONS = "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}"
_MINUS_IDENTITY = "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}"

# (model output, gold answer, dataset, expected grade)
CASES: list[tuple[str, str, str, bool]] = [
    # --- GSM8K style: numbers, currency, units, fallbacks
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18", "gsm8k", True),
    ("The answer is 18.", "18", "gsm8k", True),
    ("The final answer is $18.00.", "18", "gsm8k", True),
    ("So she earns 18 dollars.", "18", "gsm8k", True),
    ("Total: $1,234.00", "1234", "gsm8k", True),
    ("Total: $1,234.00", "1,234", "gsm8k", True),
    ("#### 1,450,000", "1,450,000", "gsm8k", True),
    ("The temperature drops to -10 degrees.", "-10", "gsm8k", True),
    ("First 3 + 4 = 7, then 7 * 2 = 14.", "14", "gsm8k", True),
    ("First 3 + 4 = 7, then 7 * 2 = 14.", "7", "gsm8k", False),
    ("The answer is \\boxed{18}", "18", "gsm8k", True),
    ("The answer is \\boxed{\\$18}", "18", "gsm8k", True),
    ("The answer is \\boxed{18 \\text{ dollars}}", "18", "gsm8k", True),
    ("We get \\boxed{18.0}.", "18", "gsm8k", True),
    ("It is 25%.", "25", "gsm8k", True),
    ("The answer is 10.", "100", "gsm8k", False),
    ("The answer is 100.", "10", "gsm8k", False),
    ("#### 42\n\nSome trailing commentary mentioning 7 apples.", "42", "gsm8k", True),
    ("No numbers here at all.", "5", "gsm8k", False),
    ("<think>maybe 12? no, 13</think>The answer is 14.", "14", "gsm8k", True),
    ("<think>maybe 12? no, 13</think>The answer is 14.", "13", "gsm8k", False),
    ("The answer is 0.5", "0.50", "gsm8k_main", True),
    ("\\boxed{5}", "5", "openai/gsm8k", True),
    # --- MATH style: fractions
    ("So the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", "math", True),
    ("So the answer is \\boxed{\\dfrac{1}{2}}.", "\\frac12", "math500", True),
    ("So the answer is \\boxed{0.5}.", "\\frac{1}{2}", "math", True),
    ("So the answer is \\boxed{1/2}.", "\\frac{1}{2}", "math", True),
    ("So the answer is \\boxed{\\frac{2}{4}}.", "\\frac{1}{2}", "math", True),
    ("So the answer is \\boxed{1/2}.", "2", "math", False),
    ("So the answer is \\boxed{\\frac{1}{3}}.", "0.33", "math", False),
    ("So the answer is \\boxed{\\frac{9}{5}}.", "1\\frac{4}{5}", "math", True),
    ("So the answer is \\boxed{-\\frac{35}{9}}.", "-\\frac{35}{9}", "math", True),
    ("So the answer is \\boxed{\\frac{35}{9}}.", "-\\frac{35}{9}", "math", False),
    # roots, pi
    ("\\boxed{2\\sqrt{5}}", "\\sqrt{20}", "math", True),
    ("\\boxed{\\frac{1}{\\sqrt{3}}}", "\\frac{\\sqrt{3}}{3}", "math", True),
    ("\\boxed{11\\sqrt2}", "11\\sqrt{2}", "math", True),
    ("\\boxed{3\\sqrt{13}}", "3\\sqrt{12}", "math", False),
    ("\\boxed{12\\pi}", "12 \\pi", "math", True),
    ("\\boxed{\\frac{20000}{\\pi}}", "\\frac{20000}{\\pi}", "math", True),
    ("\\boxed{2\\pi}", "\\pi", "math", False),
    ("\\boxed{1 \\pm \\sqrt{19}}", "1 \\pm \\sqrt{19}", "math", True),
    # intervals
    ("\\boxed{[0,1)}", "[0,1)", "math", True),
    ("\\boxed{[0,1]}", "[0,1)", "math", False),
    ("\\boxed{(3,4)}", "(3,4]", "math", False),
    ("\\boxed{(-\\infty,2)\\cup(3,\\infty)}", "(-\\infty, 2) \\cup (3, \\infty)", "math", True),
    ("\\boxed{[-2,7]}", "x \\in [-2,7]", "math", True),
    ("\\boxed{\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]}", "[\\pi^2/8, 5\\pi^2/4]", "math", True),
    # tuples, sets, lists
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", "math", True),
    ("\\boxed{(2,1)}", "(1,2)", "math", False),
    ("\\boxed{(6,31,-1)}", "(6,31,-1)", "math", True),
    ("\\boxed{(6,31,1)}", "(6,31,-1)", "math", False),
    ("\\boxed{\\{-2, 1+\\sqrt5, 1-\\sqrt5\\}}", "\\{1\\pm\\sqrt{5},-2\\}", "math", True),
    ("\\boxed{-2, 1}", "1,-2", "math", True),
    ("\\boxed{3, 5}", "3, 5, 7", "math", False),
    # matrices
    ("\\boxed{" + _COL_SPACED + "}", _COL, "math", True),
    ("\\boxed{\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}}", _COL_FRACTIONS, "math", True),
    ("\\boxed{" + _COL_SPACED.replace("-2", "2") + "}", _COL, "math", False),
    ("\\boxed{" + _MINUS_IDENTITY + "}", _MINUS_IDENTITY, "math", True),
    ("\\boxed{" + _MINUS_IDENTITY.replace("& 0", "& 1") + "}", _MINUS_IDENTITY, "math", False),
    # degrees, percent, currency, units
    ("\\boxed{30^\\circ}", "30", "math", True),
    ("\\boxed{30}", "30^\\circ", "math", True),
    ("\\boxed{30^{\\circ}}", "60^\\circ", "math", False),
    ("\\boxed{25\\%}", "25", "math", True),
    ("\\boxed{0.25}", "25\\%", "math", True),
    ("\\boxed{\\$18.90}", "18.9", "math", True),
    ("\\boxed{32348}", "\\$32,\\!348", "math", True),
    ("\\boxed{864}", "864 \\mbox{ inches}^2", "math", True),
    ("\\boxed{15 \\text{ cm}^2}", "15\\mbox{ cm}^2", "math", True),
    ("\\boxed{5.4}", "5.4 \\text{ cents}", "math", True),
    ("\\boxed{10080}", "10,\\!080", "math", True),
    ("\\boxed{\\frac{270}{7}}", "\\frac{270}7\\text{ degrees}", "math", True),
    # text answers and multiple choice
    ("\\boxed{\\text{(C)}}", "C", "math", True),
    ("\\boxed{C}", "\\text{(C)}", "math", True),
    ("\\boxed{(C)}", "\\text{(C)}", "math", True),
    ("\\boxed{D}", "\\text{(C)}", "math", False),
    ("\\boxed{Monday}", "\\text{Monday}", "math", True),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", "math", True),
    ("\\boxed{Evelny}", "\\text{Evelyn}", "math", False),
    ("\\boxed{\\text{East}}", "\\text{east}", "math", True),
    ("\\boxed{\\text{west}}", "\\text{east}", "math", False),
    # expressions, equations, complex numbers, bases
    ("\\boxed{x^3}", "x^2", "math", False),
    ("\\boxed{2(k+1)}", "2k+2", "math", True),
    ("\\boxed{ab+2a+5b+10}", "(a+5)(b+2)", "math", True),
    ("\\boxed{y=2x+3}", "y = 2x + 3", "math", True),
    ("\\boxed{x=5}", "5", "math", True),
    ("\\boxed{5}", "x=5", "math", True),
    ("\\boxed{6+5i}", "6 - 5i", "math", False),
    ("\\boxed{6-5i}", "6 - 5i", "math", True),
    ("\\boxed{52_8}", "52_8", "math", True),
    ("\\boxed{025}", "25", "aime24", True),
    ("\\boxed{27}", "27.0", "amc23", True),
    ("\\boxed{10}", "100", "math", False),
    # phrases and fallbacks in MATH style
    ("Therefore, the final answer is $\\frac{14}{3}$. I hope it is correct.", "\\frac{14}{3}", "math", True),
    ("The answer is: 7", "7", "math", True),
    ("#### 7", "7", "math", True),
    ("After all that work we get 7.", "7", "math", True),  # no marker: the last number, as math-verify reads it
    ("After all that work we get 7.", "8", "math", False),
    ("", "7", "math", False),
    # think blocks
    ("<think>I think \\boxed{3}</think>So the answer is \\boxed{4}.", "4", "math", True),
    ("<think>I think \\boxed{3}</think>So the answer is \\boxed{4}.", "3", "math", False),
    ("reasoning without an opening tag \\boxed{3}</think>Final: \\boxed{5}", "5", "math", True),
    ("<think>truncated reasoning, \\boxed{3} maybe", "3", "math", False),
    # multiple boxes: last (default) vs first
    ("First \\boxed{2}, then corrected: \\boxed{3}", "3", "math", True),
    ("First \\boxed{2}, then corrected: \\boxed{3}", "2", "math", False),
    # nested braces and brace-less box
    ("\\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{\\sqrt{3}}{3}", "math", True),
    ("so \\boxed 5.", "5", "math", True),
    ("\\fbox{7}", "7", "math", True),
    # adversarial output is just a wrong answer
    ("\\boxed{__import__('os').system('echo hi')}", "0", "math", False),
]


@pytest.mark.parametrize(("text", "gold", "dataset", "expected"), CASES)
def test_grade_table(text: str, gold: str, dataset: str, expected: bool) -> None:
    assert grade(text, gold, dataset) is expected


def test_table_is_large_and_mixed() -> None:
    assert len(CASES) >= 80
    assert sum(1 for *_, ok in CASES if not ok) >= 25
    assert {answer_style(d) for _, _, d, _ in CASES} == {"math", "gsm8k"}


def test_answer_style() -> None:
    assert answer_style("gsm8k") == "gsm8k"
    assert answer_style("GSM8K_platinum") == "gsm8k"
    assert answer_style("../shared/data/gsm8k/test.jsonl") == "gsm8k"
    for name in ("math", "math500", "aime24", "amc23", "something-new"):
        assert answer_style(name) == "math"


def test_grading_takes_a_style_not_a_dataset_name() -> None:
    """Inside grading a style is a style: a data set's name is refused, not silently read as MATH. The two
    documented entry points (`extract_answer`, `grade`) still read a data set's name as its answer style."""
    with pytest.raises(ValueError, match="unknown answer style 'gsm8k_main'"):
        extract_candidates("#### 1,234", "gsm8k_main")  # type: ignore[arg-type]
    with Grader(workers=1) as grader, pytest.raises(ValueError, match="unknown answer style 'math500'"):
        grader.grade_many([("\\boxed{1}", "1", "math500")])
    assert extract_answer("It costs $1,234.00.", "gsm8k_main") == extract_answer("It costs $1,234.00.", "gsm8k")
    assert grade("The answer is 0.5", "0.50", "gsm8k_main")


@pytest.mark.parametrize(
    ("text", "dataset", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}}.", "math", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "math", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\{1,2\\}}", "math", "\\{1,2\\}"),
        ("\\boxed{\\boxed{7}}", "math", "7"),
        ("\\boxed 5$ and more", "math", "5"),
        ("\\boxed{} then \\boxed{8}", "math", "8"),
        ("unclosed \\boxed{\\frac{1}{2}", "math", "\\frac{1}{2}"),  # no box, but a fraction to read
        ("unclosed \\boxed{x", "math", None),
        ("The final answer is $x^2+1$.", "math", "x^2+1"),
        ("The answer is \\(\\sqrt{2}\\) because", "math", "\\sqrt{2}"),
        ("The answer is 3.5. Next, we check.", "math", "3.5"),
        ("**Final Answer:** 12", "math", "12"),
        ("My answer is 5, as shown.", "math", "5"),
        ("The answer = 9", "math", "9"),
        ("We are done: 12 apples.", "math", "12"),
        ("The answer is (B).", "math", "(B)"),
        ("Final Answer: The smallest $k$ is 12.", "math", "12"),
        ("\\boxed{3} Final Answer: The final answer is $5$.", "math", "5"),
        ("Final answer: $5$, checked: \\boxed{6}", "math", "6"),
        ("So \\boxed{2}, \\boxed{5}.", "math", "2, 5"),
        ("\\boxed{3}. I hope this final answer is right.", "math", "3"),
        ("\\boxed{12}\n\nFinal answer check: we verified 3 cases.", "math", "12"),  # no "final answer is"
        ("\\boxed{12}\n\nFinal answer check: we verified 3 cases.", "gsm8k", "12"),
        ("Final answer check: we verified 3 cases.", "math", "3"),  # no box to keep: the number it names
        ("No answer in words here.", "math", None),
        ("We are done: 12 apples.", "gsm8k", "12"),
        ("It costs $1,234.00 in total.", "gsm8k", "1234"),
        ("#### $1,234", "gsm8k", "1234"),
        ("The answer is -3 degrees.", "gsm8k", "-3"),
        ("\\boxed{\\$18}", "gsm8k", "18"),
        ("\\boxed{\\frac{3}{4}}", "gsm8k", "\\frac{3}{4}"),
        ("<think>42</think>", "gsm8k", None),
        ("<think>The answer is 41", "gsm8k", None),
        ("", "gsm8k", None),
    ],
)
def test_extract_answer(text: str, dataset: str, expected: str | None) -> None:
    assert extract_answer(text, dataset) == expected


def test_extract_first_and_all() -> None:
    text = "maybe \\boxed{2}; or rather \\boxed{\\frac{1}{2}}; finally \\boxed{3}"
    assert extract_answer(text) == "3"
    assert extract_answer(text, box_match="first") == "2"
    assert extract_all_answers(text) == ["2", "\\frac{1}{2}", "3"]
    assert extract_all_answers("The answer is 4.") == ["4"]
    assert extract_all_answers("nothing") == []
    assert extract_candidates(text, box_match="any") == ["3", "2", "\\frac{1}{2}"]
    # a run of boxes is one answer, and under "any" each of its boxes is a candidate too
    assert extract_candidates("\\boxed{2}, \\boxed{5}", box_match="any") == ["2, 5", "2", "5"]
    with pytest.raises(ValueError, match="box_match"):
        extract_answer(text, box_match="middle")


def test_grade_any_box() -> None:
    text = "Candidates: \\boxed{2}; then \\boxed{0.5}; finally \\boxed{7}"
    assert grade(text, "\\frac{1}{2}", box_match="any")
    assert not grade(text, "\\frac{1}{2}")
    assert grade(text, "2", box_match="first")
    assert not grade(text, "3", box_match="any")
    assert grade("The answer is 3.", "3", box_match="any")


def test_grade_with_plain_math_verify() -> None:
    assert grade("so $\\boxed{\\frac{1}{2}}$", "0.5", engine="math-verify")
    assert not grade("\\boxed{0.\\overline{3}}", "\\frac{1}{3}", engine="math-verify")  # plain misses it
    assert grade("\\boxed{0.\\overline{3}}", "\\frac{1}{3}")
    with pytest.raises(ValueError, match="grader"):
        grade("\\boxed{1}", "1", engine="sympy")


@pytest.mark.parametrize(
    ("answer", "key"),
    [
        ("  \\dfrac{1}{2} ", "\\frac{1}{2}"),
        ("1/2", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("$18.00", "18"),
        ("18 dollars", "18"),
        ("\\$1,234", "1234"),
        ("25\\%", "25"),
        ("30^\\circ", "30"),
        ("x = 5", "5"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("\\text{(C)}", "C"),
        ("\\text{Monday}", "monday"),
        ("5\\text{ cm}^2", "5"),
        ("\\frac 34", "\\frac{3}{4}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("\\cot x", "\\cot x"),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
        (None, ""),
    ],
)
def test_canonical_form(answer: str | None, key: str) -> None:
    assert canonical_form(answer) == key


def test_is_equiv_edge_cases() -> None:
    assert not is_equiv(None, "1")
    assert not is_equiv("", "1")
    assert not is_equiv("1", "")
    assert is_equiv("27", 27.0)  # type: ignore[arg-type]  # amc23 stores golds as floats


def test_adversarial_output_is_not_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The payloads name a relative file, so the graded text holds no digits from wherever the test runs
    # (a temporary folder such as pytest-0 would otherwise offer its "0" as the last number in the text).
    monkeypatch.chdir(tmp_path)
    target = "pwned"
    payloads = [
        f"\\boxed{{__import__('os').system('touch {target}')}}",
        f"The answer is __import__('os').system('touch {target}')",
        f"#### __import__('os').system('touch {target}')",
        f"\\boxed{{exec(\"open('{target}', 'w').write('x')\")}}",
        f"\\boxed{{eval(compile(\"open('{target}','w')\", 'f', 'exec'))}}",
    ]
    assert not any(ch.isdigit() for text in payloads for ch in text)
    for text in payloads:
        assert not grade(text, "0")
        assert not grade(text, "0", "gsm8k")
        assert not is_equiv(extract_answer(text), "0")
        assert not is_equiv("0", extract_answer(text) or "")
    with Grader(workers=1) as grader:  # its workers start here, in tmp_path
        assert grader.grade_many([(t, "0", "math") for t in payloads]) == [False] * len(payloads)
    assert list(tmp_path.iterdir()) == []


def test_is_equiv_from_a_thread() -> None:
    results: dict[str, object] = {}

    def work() -> None:
        try:
            results["value"] = [
                is_equiv("\\frac{1}{\\sqrt3}", "\\frac{\\sqrt{3}}{3}"),
                is_equiv("(2,1)", "(1,2)"),
                grade("\\boxed{2k+2}", "2(k+1)"),
            ]
        except BaseException as exc:  # pragma: no cover - reported below
            results["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert "error" not in results, results.get("error")
    assert results["value"] == [True, False, True]


# The time limits below are hang guards far above what the tests need; they assert no speed.
@pytest.mark.timeout(120)
def test_is_equiv_main_thread_timeout() -> None:
    assert not is_equiv("9^{9^{9}}", "1", timeout=0.5)  # sympy works on this for minutes
    assert is_equiv("\\frac{1}{\\sqrt3}", "\\frac{\\sqrt{3}}{3}", timeout=5)


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout=5.0) as g:
        yield g


def test_grader_matches_serial_and_keeps_order(grader: Grader) -> None:
    items = [(text, gold, answer_style(dataset)) for text, gold, dataset, _ in CASES]
    expected = [ok for *_, ok in CASES]
    assert grader.grade_many(items) == expected
    assert grader.grade_many(items) == [grade(*item) for item in items]
    pairs = [(extract_answer(t, d), g) for t, g, d in items]
    assert grader.is_equiv_many(pairs[::-1]) == expected[::-1]
    assert grader.is_equiv_many([]) == []


def test_grader_any_box(grader: Grader) -> None:
    text = "Candidates: \\boxed{2}; then \\boxed{0.5}; finally \\boxed{7}"
    items = [(text, "\\frac{1}{2}", "math"), (text, "3", "math"), ("The answer is 3.", "3", "math")]
    assert grader.grade_many(items, box_match="any") == [True, False, True]
    assert grader.grade_many(items) == [False, False, True]


@pytest.mark.timeout(120)
def test_grader_slow_item_times_out(grader: Grader) -> None:
    grader.timeout = 1.0
    try:
        verdicts = grader.is_equiv_many([("0.5", "\\frac{1}{2}"), ("9^{9^{9}}", "1"), ("2(k+1)", "2k+2")])
        assert verdicts == [True, False, True]
    finally:
        grader.timeout = 5.0


@pytest.mark.timeout(120)
def test_grader_tiny_timeout_kills_and_recovers() -> None:
    # worker_timer=False: only the parent's deadline applies, so the stuck pool must be replaced
    pairs = [("\\frac{1}{\\sqrt3}", "\\frac{\\sqrt{3}}{3}"), ("2(k+1)", "2k+2")]
    with Grader(workers=1, timeout=1e-3, worker_timer=False) as grader:
        assert grader.is_equiv_many(pairs) == [False, False]
        assert grader.restarts >= 1
        assert grader.is_equiv_many([("18.0", "18")]) == [True]  # settled without the pool
        grader.timeout = 5.0
        assert grader.is_equiv_many(pairs) == [True, True]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.timeout(300)  # a hang guard
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads worker CPU time from /proc")
def test_grader_retries_the_items_of_a_worker_that_was_killed() -> None:
    # One worker, one chunk: a slow item (sympy grinds on 9^(9^9) until its time limit) then a quick one.
    # The worker is killed (SIGKILL, as the OOM killer would) once it is busy on the slow item; the
    # chunk's items are retried in a new pool, so the quick item is still graded right.
    pairs = [("9^{9^{9}}", "1"), ("2(k+1)", "2k+2")]
    with Grader(workers=1, timeout=5.0, chunk_size=2) as grader:
        assert grader.is_equiv_many([("\\frac{1}{\\sqrt3}", "\\frac{\\sqrt{3}}{3}")]) == [True]  # pool up, warm
        (worker,) = grader._pool._processes.values()
        idle = _cpu_seconds(worker.pid)
        killed = threading.Event()

        def kill_when_busy() -> None:
            while worker.is_alive() and _cpu_seconds(worker.pid) < idle + 0.15:  # computing, not waiting
                killed.wait(0.02)
            os.kill(worker.pid, signal.SIGKILL)
            killed.set()

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        verdicts = grader.is_equiv_many(pairs)
        killer.join()
        assert killed.is_set() and not worker.is_alive()
        assert verdicts == [False, True]  # the slow item ran out of time on its retry; the quick one was redone
        assert grader.restarts == 1 and worker.pid not in grader._pool._processes
        assert grader.is_equiv_many([("0.5", "\\frac{1}{2}"), ("x+1", "1+x")]) == [True, True]  # the new pool works


@pytest.mark.timeout(300)
def test_grader_isolates_the_slow_item_of_a_chunk() -> None:
    # parent deadline only: the 4-item chunk overruns, its items are retried one by one,
    # and only the genuinely slow one (sympy grinds on 9^(9^9)) counts as False. The limit per item
    # is far above what the quick items need, so a loaded machine changes nothing but the restarts
    # (at least two: the chunk, then the slow item alone).
    pairs = [
        ("2(k+1)", "2k+2"),
        ("9^{9^{9}}", "1"),
        ("x+1", "1+x"),
        ("(2,1)", "(1,2)"),
        ("\\frac{1}{\\sqrt3}", "\\frac{\\sqrt{3}}{3}"),
    ]
    with Grader(workers=1, timeout=3.0, chunk_size=4, worker_timer=False) as grader:
        assert grader.is_equiv_many(pairs) == [True, False, True, False, True]
        assert grader.restarts >= 2


def _math500() -> list[dict]:
    path = DATA / "math500" / "test.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_math500_gold_answers_grade_against_themselves(grader: Grader) -> None:
    golds = [row["answer"] for row in _math500()]
    assert len(golds) == 500
    items = [("... so the answer is \\boxed{" + a + "}", a, "math") for a in golds]
    verdicts = grader.grade_many(items)
    failing = [a for a, ok in zip(golds, verdicts, strict=True) if not ok]
    assert sum(verdicts) >= 0.99 * len(golds), failing


def test_math500_gold_answers_equal_another_form_of_themselves(grader: Grader) -> None:
    # `{gold}` has another canonical form than `gold`, so no string rule settles the pair: math-verify in the
    # grader's workers must read both and find them equal (tuples, intervals and words are left out: braces
    # make those a set). The same pairs against gold + 1 must come out unequal.
    golds = [a for a in (row["answer"] for row in _math500())
             if not is_collection(a) and "," not in a and "text" not in a and "mbox" not in a]
    pairs = [("{" + a + "}", a) for a in golds[::2]]  # every other one: a worker's parse costs ~0.1 s
    assert len(pairs) > 200 and all(quick_equiv(p, g) is None for p, g in pairs)
    verdicts = grader.is_equiv_many(pairs)
    assert [g for (_, g), ok in zip(pairs, verdicts, strict=True) if not ok] == []
    off_by_one = grader.is_equiv_many([(p, g + "+1") for p, g in pairs[:100]])
    assert sum(off_by_one) <= 1  # at most an infinity (infinity + 1 is infinity)


def test_math500_gold_answers_parse_with_math_verify() -> None:
    # bypasses the string short-circuit: math-verify itself must read every gold answer
    golds = [row["answer"] for row in _math500()]
    failing = [a for a in golds if not math_verify_equiv(a, a)]
    assert failing == []


def test_gsm8k_gold_answers_grade_against_themselves(grader: Grader) -> None:
    path = DATA / "gsm8k" / "test.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:300]]
    golds = [row["answer"].split("####")[-1].strip() for row in rows]
    items = [("Adding it all up.\n#### " + g, g, "gsm8k") for g in golds]
    items += [(row["answer"], g, "gsm8k") for row, g in zip(rows, golds, strict=True)]
    verdicts = grader.grade_many(items)
    failing = [item[1] for item, ok in zip(items, verdicts, strict=True) if not ok]
    assert sum(verdicts) >= 0.99 * len(items), failing


# --- the plain math-verify grader option and `evaluate --grader`

_RUN_OUTPUTS = [  # (candidate text, gold): the first two graded alike, the last two only by inferencekit
    ("so $\\boxed{\\frac{1}{2}}$", "0.5"),
    ("so $\\boxed{7}$", "8"),
    ("\\boxed{0.\\overline{3}}", "\\frac{1}{3}"),
    ("\\boxed{\\textbf{(C) }7}", "(C)"),
]


def _write_run(path: Path) -> Path:
    from inferencekit.config import RunConfig
    from inferencekit.results.records import CandidateRecord, Record
    from inferencekit.results.store import RunStore

    store = RunStore(path)
    store.write_config(RunConfig(dataset="math500", votes=["majority"]).to_yaml())
    for index, (text, gold) in enumerate(_RUN_OUTPUTS):
        store.append(Record(index, input=f"problem {index}", reference=gold,
                            candidates=[CandidateRecord(text, tokens=3)], usage={"completion_tokens": 3}))
    return path


def test_grader_many_with_the_math_verify_engine(grader: Grader) -> None:
    items = [(text, gold, "math") for text, gold in _RUN_OUTPUTS]
    assert grader.grade_many(items) == [True, False, True, True]
    assert grader.grade_many(items, engine="math-verify") == [True, False, False, False]
    outcomes = grader.extract_and_grade_many(items, engine="math-verify")
    assert [ok for _, ok in outcomes] == [True, False, False, False]
    assert outcomes[0][0] is not None
    with pytest.raises(ValueError, match="grader must be one of"):
        grader.grade_many(items, engine="sympy")


def test_grader_disagreements_lists_index_answers_and_gold(grader: Grader) -> None:
    from inferencekit.results.disagreements import format_disagreements, grader_disagreements
    from inferencekit.results.records import CandidateRecord, Record

    records = [Record(i, reference=gold, candidates=[CandidateRecord(text)])
               for i, (text, gold) in enumerate(_RUN_OUTPUTS)]
    records.append(Record(9, reference="1", failed=True, error="timeout"))
    found = grader_disagreements(records, "math", grader=grader)
    assert [(d.index, d.ours_correct, d.plain_correct) for d in found] == [(2, True, False), (3, True, False)]
    assert found[1].ours == "\\textbf{(C) }7" and found[1].gold == "(C)"
    text = format_disagreements(found, len(records), show=1)
    assert text.splitlines()[0].startswith("graders disagree on 2 of 5 samples")
    assert "sample 2 candidate 0" in text and "... and 1 more" in text


def test_evaluate_with_the_math_verify_grader_prints_disagreements(tmp_path: Path) -> None:
    import subprocess
    import sys

    run = _write_run(tmp_path / "math500" / "run")
    cmd = [sys.executable, "-m", "inferencekit.cli", "evaluate", str(run), "--grader", "math-verify"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "graders disagree on 2 of 4 samples" in result.stdout
    assert "sample 2 candidate 0" in result.stdout and "sample 3 candidate 0" in result.stdout
    (evaluation,) = (run / "evaluations").iterdir()  # a named evaluation: the run's own files stay as they were
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["grader"] == "math-verify" and metrics["votes"]["majority"]["accuracy"] == 0.25
    bad = subprocess.run(cmd[:-1] + ["sympy"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "grader" in bad.stderr and "Traceback" not in bad.stderr


_PATHOLOGICAL = [
    "x" * 1_000_000 + " so the answer is \\boxed{5}",  # 1 MB of output, answer at the end
    "\\boxed{" + "\\text{" * 20_000 + "6" + "}" * 20_000 + "}",  # deeply nested braces in a box (wrong either way)
    "$" + "{" * 100_000 + "1" + "}" * 100_000 + "$",  # deeply nested braces, no box
    "The answer is $9^{9^{9^{9}}}$",  # a number no computer can write out
    "\\boxed{" * 100_000,  # boxes that never close
]


@pytest.mark.timeout(600)  # a hang guard: each item has a 2-second limit
def test_pathological_outputs_return_within_the_limit() -> None:
    verdicts = [grade(text, "5", timeout=2.0) for text in _PATHOLOGICAL]
    assert verdicts == [True, False, False, False, False]
    with Grader(workers=2, timeout=2.0) as grader:
        assert grader.grade_many([(text, "5", "math") for text in _PATHOLOGICAL]) == verdicts


@pytest.mark.parametrize("thread", ["main", "worker"])
def test_a_time_limit_whose_exception_is_lost_fires_again(thread: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python ignores an exception raised in `__del__` (or a weakref callback, which the garbage collector runs
    anywhere): a limit landing there is lost, and a pathological comparison then ran on past its limit. In the main
    thread the limit is an alarm; in a search's worker thread an exception raised from a timer thread."""
    from inferencekit.grading.equivalence import GradingTimeout, time_limit

    lost: list[object] = []
    # A builtin as the hook: no Python code runs inside it for a second raise to land in (pytest's own hook is Python,
    # and one landing there fails the test whatever the limit does).
    monkeypatch.setattr("sys.unraisablehook", lost.append)

    class SlowToDrop:
        def __del__(self) -> None:
            end = time.monotonic() + 2.0
            while time.monotonic() < end:  # the first raise, 0.2 s in, lands here and is ignored
                pass

    def drop_then_spin(outcome: dict[str, bool]) -> None:
        give_up = time.monotonic() + 30  # a bound on the failure, not a timing: a lost limit spun on to here
        try:
            with time_limit(0.2):
                SlowToDrop()
                while time.monotonic() < give_up:
                    pass
        except GradingTimeout:
            outcome["stopped"] = time.monotonic() < give_up

    for _ in range(3):  # the first raise must land in `__del__`; on a busy machine it can come before, so again
        outcome: dict[str, bool] = {}
        if thread == "main":
            drop_then_spin(outcome)
        else:
            worker = threading.Thread(target=drop_then_spin, args=(outcome,))
            worker.start()
            worker.join()
        assert outcome == {"stopped": True}
        if lost:
            break
    assert lost and lost[0].exc_type is GradingTimeout  # type: ignore[attr-defined]


@pytest.mark.timeout(120)  # a hang guard
def test_extract_answer_has_a_time_limit_of_its_own() -> None:
    text = "Answer " * 150_000 + "$1$"  # math-verify's answer patterns grind on this for a long time
    assert extract_answer(text, timeout=0.5) in (None, "1")
    assert extract_answer("so the answer is $\\frac{1}{2}$.", timeout=5.0) == "\\frac{1}{2}"


@pytest.mark.timeout(120)  # a hang guard
def test_extract_answer_keeps_its_time_limit_in_a_worker_thread() -> None:
    """A search groups answers in its worker threads, where SIGALRM cannot reach: the limit still holds
    (about 9 s without one on 2 shared cores; well under 5 s with it)."""
    import threading

    text = "Answer " * 150_000 + "$1$"
    outcome: dict[str, object] = {}

    def worker() -> None:
        start = time.monotonic()
        outcome["answer"] = extract_answer(text, timeout=0.5)
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(100)
    assert outcome["answer"] in (None, "1") and outcome["seconds"] < 5


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is 1e23.", "100000000000000000000000"),
    ("So we get 6.02e23 molecules.", "602000000000000000000000"),
    ("The answer is 2.5E-3", "0.0025"),
    ("answer: -4e2", "-400"),
    ("The answer is 2e500", "2e500"),  # past 1e100 it is kept as written, not expanded
    ("I ate 3 eggs", "3"),  # an "e" that starts a word is no exponent
])
def test_gsm8k_numbers_keep_their_exponent(text: str, expected: str) -> None:
    assert extract_answer(text, "gsm8k") == expected


def test_the_design_entry_points_take_a_dataset_keyword() -> None:
    """DESIGN.md fixes `extract_answer(text, dataset=...)` and `grade(text, gold, dataset=...)`."""
    text = "She pays $1,234.00 in all.\n#### 1,234"
    assert extract_answer(text, dataset="gsm8k") == extract_answer(text, "gsm8k") == "1234"
    assert grade(text, "1234", dataset="gsm8k") and grade("The answer is 1e3", "1000", dataset="gsm8k")
    assert extract_answer("so $\\frac{1}{2}$", dataset="math500") == extract_answer("so $\\frac{1}{2}$", "math")
