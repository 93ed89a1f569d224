"""Sweeps: many methods and budgets on one model and dataset, run together, reported as a compute frontier."""

from inferencekit.sweep.execute import SPEC, SweepResult, is_sweep, read_spec, sweep
from inferencekit.sweep.spec import PlannedRun, SweepSpec, load_spec, parse_spec, plan

__all__ = ["SPEC", "PlannedRun", "SweepResult", "SweepSpec", "is_sweep", "load_spec", "parse_spec", "plan",
           "read_spec", "sweep"]
