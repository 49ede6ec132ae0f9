"""The family wing: everything that knows a run has several stages or lives in a workdir.

Owns: the run plan (run_plan.py: one validation pass -> members, transitions, budgets), the transition table
(transitions.py), the cost rule and budgets (budgets.py), the pipeline over stages (pipeline.py), how a stage starts
from another member (growth.py, pruning.py), runs derived from a checkpoint (derive.py: expand, prune), the workdir
layout, its lock and member restores (workdir.py, lock.py), passes over the data (passes.py), and the workdir-level
operations: evaluation (evaluation.py), sampling (serving.py), Hugging Face export/import (hf_runs.py); and the one
exception boundary of every entry point (boundary.py).
May import train, eval, serve, interop and everything below them; only cli imports it.
"""
