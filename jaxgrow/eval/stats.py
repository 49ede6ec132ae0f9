"""Seeds, means and 95% intervals for experiments that compare arms.

Every number an experiment reports across seeds goes through `mean_ci` (Student-t interval of the mean);
a comparison of two arms goes through `paired` (the per-seed differences, since arms that share a seed share
its data order and initial draw) and `verdict`: a claim is `met` only when the interval of its paired
difference lies wholly on the claimed side of 0, `not_met` when it lies wholly on the other side, and
`inconclusive` otherwise (also with a single seed, where no interval exists).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from jaxgrow.config import InputError


VERDICTS = ("met", "not_met", "inconclusive")


def parse_seeds(text: str, field: str = "--seeds") -> list[int]:
    """'0,1,2' -> [0, 1, 2]; InputError for an empty list, a non-integer or a duplicate."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise InputError(f"{field} is empty; give one or more distinct integer seeds, e.g. {field}=0,1,2")
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"{field}={text!r}: seeds must be integers, e.g. {field}=0,1,2") from None
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise InputError(f"{field}={text!r} repeats seed(s) {dup}; each seed must appear once")
    return seeds


def mean_ci(values: Iterable[float], level: float = 0.95) -> dict:
    """{'mean', 'ci95': [lo, hi] or None, 'std', 'n', 'values'}: t-interval of the mean (None for n < 2)."""
    x = np.asarray([float(v) for v in values], np.float64)
    n = len(x)
    if n == 0:
        return {"mean": None, "ci95": None, "std": None, "n": 0, "values": []}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "ci95": None, "std": None, "n": 1, "values": x.tolist()}
    std = float(x.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "std": std, "n": n, "values": x.tolist()}


def paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """mean_ci of the per-seed differences a_i - b_i."""
    if len(a) != len(b):
        raise ValueError(f"paired difference needs equal lengths, got {len(a)} and {len(b)}")
    return mean_ci([float(x) - float(y) for x, y in zip(a, b)])


def verdict(diff: dict, claim_sign: int) -> str:
    """claim_sign=-1: the claim is that the difference is negative (e.g. loss A - loss B < 0); +1: positive."""
    ci = diff.get("ci95")
    if ci is None:
        return "inconclusive"
    lo, hi = ci
    if (claim_sign < 0 and hi < 0) or (claim_sign > 0 and lo > 0):
        return "met"
    if (claim_sign < 0 and lo > 0) or (claim_sign > 0 and hi < 0):
        return "not_met"
    return "inconclusive"


def aggregate_metrics(per_seed: Sequence[dict]) -> dict:
    """[{metric: value} per seed] -> {metric: mean_ci over the seeds that report it}.

    Generic on purpose: any numeric metric a member reports (eval loss, epochs, a benchmark's accuracy or bits
    per byte) gets `<name>_mean` / `<name>_ci95` in the comparison without code that knows its name.
    """
    names = sorted({k for d in per_seed for k, v in d.items() if _is_number(v)})
    return {name: mean_ci([d[name] for d in per_seed if _is_number(d.get(name))]) for name in names}


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(float(v))


def fmt(summary: dict, digits: int = 4) -> str:
    """'4.5012 ± 0.0123' (half-width of the 95% interval), or just the mean for one seed."""
    if summary.get("mean") is None:
        return "—"
    if summary.get("ci95") is None:
        return f"{summary['mean']:.{digits}f}"
    half = (summary["ci95"][1] - summary["ci95"][0]) / 2
    return f"{summary['mean']:.{digits}f} ± {half:.{digits}f}"
