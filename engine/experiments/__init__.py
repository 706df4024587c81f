"""Run groups: sweeps of one or two fields over a stage's settings, and the course's
experiment recipes, run one after another by the `experiment` stage (runner.py) and
stored as groups (storage table `run_groups`). The plan's vocabulary is in plan.py."""
from engine.experiments.plan import (Chart, PlannedRun, Recipe, RECIPES,  # noqa: F401
                                     expand_sweep, parse_vary, ref, register)
