"""Answer extraction and equivalence checking for math benchmarks.

>>> grade("... so the answer is \\\\boxed{\\\\frac{1}{2}}", "0.5")
True
"""

from inferencekit.grading.engine import ENGINES
from inferencekit.grading.equivalence import is_equiv
from inferencekit.grading.extract import extract_all_answers, extract_answer, extract_candidates
from inferencekit.grading.grade import grade
from inferencekit.grading.normalize import canonical_form
from inferencekit.grading.pool import Grader
from inferencekit.grading.style import answer_style

__all__ = [
    "ENGINES",
    "Grader",
    "answer_style",
    "canonical_form",
    "extract_all_answers",
    "extract_answer",
    "extract_candidates",
    "grade",
    "is_equiv",
]
