"""Seeds, means and 95% intervals for experiments that compare arms.

Every number an experiment reports across seeds goes through `mean_ci` (Student-t interval of the mean);
a comparison of two arms goes through `paired` (the per-seed differences, since arms that share a seed share
its data order and initial draw) and `verdict`: a claim is `met` only when the interval of its paired
difference lies wholly on the claimed side of 0, `not_met` when it lies wholly on the other side, and
`inconclusive` otherwise (also with a single seed, where no interval exists); `not_applicable` when the two arms are
the same run by construction. Every claim also carries its minimum detectable effect (`min_detectable_effect`: the
difference a paired t-test at 5% would detect with 80% power at the observed standard deviation) and the seeds that
would decide it at the observed mean and SD (`seeds_to_decide`). `ols` fits a linear model with t-intervals on its
coefficients (the KL claim at equal quality gap).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from jaxgrow.config import InputError


VERDICTS = ("met", "not_met", "inconclusive", "not_applicable")


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


def min_detectable_effect(std: float | None, n: int, level: float = 0.95, power: float = 0.8) -> float | None:
    """The smallest true paired difference a two-sided t-test at 1 - level detects with probability `power`, at
    standard deviation `std` of the per-seed differences over n seeds: (t_{1-a/2} + t_{power}) * std / sqrt(n)."""
    if std is None or n < 2:
        return None
    return detectable_from_stderr(std / math.sqrt(n), n - 1, level, power)


def detectable_from_stderr(stderr: float | None, df: int, level: float = 0.95, power: float = 0.8) -> float | None:
    """min_detectable_effect of any estimate with standard error `stderr` on `df` degrees of freedom."""
    if stderr is None or df < 1:
        return None
    return float((scipy_stats.t.ppf(0.5 + level / 2, df) + scipy_stats.t.ppf(power, df)) * stderr)


def seeds_to_decide(mean: float | None, std: float | None, boundary: float = 0.0, level: float = 0.95,
                    max_seeds: int = 1000) -> int | None:
    """The fewest seeds whose 95% t-interval around `mean` (at standard deviation `std`) excludes `boundary`; None
    when it never would (mean on the boundary, or no SD yet)."""
    if mean is None or std is None or std == 0:
        return None
    gap = abs(mean - boundary)
    for n in range(2, max_seeds + 1):
        if scipy_stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n) < gap:
            return n
    return None


def ols(y: Sequence[float], columns: dict[str, Sequence[float]], level: float = 0.95) -> dict:
    """Least squares y ~ intercept + columns: {name: {'estimate', 'ci95', 'stderr'}} plus 'n' and 'df' (the
    residual degrees of freedom; intervals are None when it is 0)."""
    y = np.asarray(y, np.float64)
    names = ["intercept", *columns]
    x = np.column_stack([np.ones_like(y)] + [np.asarray(columns[c], np.float64) for c in columns])
    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    df = len(y) - rank
    out: dict = {"n": int(len(y)), "df": int(df)}
    cov = None
    if df > 0:
        resid = y - x @ beta
        cov = float(resid @ resid / df) * np.linalg.pinv(x.T @ x)
    half_t = float(scipy_stats.t.ppf(0.5 + level / 2, df)) if df > 0 else None
    for i, name in enumerate(names):
        se = float(math.sqrt(max(cov[i, i], 0.0))) if cov is not None else None
        ci = [float(beta[i] - half_t * se), float(beta[i] + half_t * se)] if se is not None else None
        out[name] = {"estimate": float(beta[i]), "stderr": se, "ci95": ci}
    return out
