"""Peak-LR rules fitted from sweeps: the loss-optimal peak per model size, `peak = a·N^-α` with an interval on α,
and the rule file experiments/lr_sweep.py writes and experiments/reproduce_paper.py --lr_rule_file reads.

Rule file (JSON):
    {"members": [{"name": ..., "non_embedding_params": N}, ...],   # the config it was fitted for
     "lr": {"rule": "table", "table": "N:lr,N:lr,..."}               # or {"rule": "power", "peak", "n_ref", "alpha"}
     "fit": {"a", "alpha", "alpha_ci95", "optimal_peaks": {...}}, "sweep": {...}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats as scipy_stats

from jaxgrow import config as config_lib
from jaxgrow.config import InputError
from jaxgrow.model import layout


RULES = ("table", "power")


def log_spaced(low: float, high: float, count: int) -> list[float]:
    """count peak LRs from low to high, evenly spaced in log; InputError for < 2 or a bad range."""
    if count < 2:
        raise InputError(f"--num_lrs={count}: an LR sweep needs at least 2 learning rates (4 or more to locate "
                         "an optimum)")
    if not (0 < low < high):
        raise InputError(f"--lr_min={low}, --lr_max={high}: need 0 < lr_min < lr_max")
    return [float(x) for x in np.geomspace(low, high, count)]


def optimal_peak(lrs: Sequence[float], losses: Sequence[float]) -> dict:
    """The loss-optimal peak among swept LRs, refined by a parabola in log(lr) through the best point and its two
    neighbours when the best is interior (clipped to that bracket). edge=True when the best is the smallest or
    largest LR swept (the true optimum may lie outside the sweep)."""
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    order = np.argsort(lrs)
    lrs, losses = lrs[order], losses[order]
    finite = np.isfinite(losses)
    if not finite.any():
        raise ValueError("every run of the sweep diverged")
    k = int(np.nanargmin(np.where(finite, losses, np.inf)))
    best = float(lrs[k])
    edge = k == 0 or k == len(lrs) - 1
    if not edge and np.all(np.isfinite(losses[k - 1:k + 2])):
        x, y = np.log(lrs[k - 1:k + 2]), losses[k - 1:k + 2]
        c2, c1, _ = np.polyfit(x, y, 2)
        if c2 > 0:
            best = float(np.exp(np.clip(-c1 / (2 * c2), x[0], x[2])))
    return {"peak": best, "best_swept": float(lrs[k]), "edge": bool(edge), "loss": float(losses[k])}


def fit_power(ns: Sequence[float], peaks: Sequence[float]) -> dict:
    """Least squares of log(peak) = log(a) - α·log(N): {'a', 'alpha', 'alpha_ci95' (None for 2 sizes), 'r2'}."""
    x, y = np.log(np.asarray(ns, np.float64)), np.log(np.asarray(peaks, np.float64))
    n = len(x)
    if n < 2:
        raise ValueError("fitting peak = a·N^-alpha needs at least 2 sizes")
    res = scipy_stats.linregress(x, y)
    alpha = -float(res.slope)
    ci = None
    if n > 2:
        half = float(scipy_stats.t.ppf(0.975, n - 2)) * float(res.stderr)
        ci = [alpha - half, alpha + half]
    r2 = float(res.rvalue ** 2) if n > 2 else 1.0
    return {"a": float(math.exp(res.intercept)), "alpha": alpha, "alpha_ci95": ci, "alpha_stderr": float(res.stderr)
            if n > 2 else None, "r2": r2, "n_sizes": n}


def rule_lr(rule: str, ns: Sequence[float], peaks: Sequence[float], fit: dict) -> dict:
    """The config override for `rule`: 'table' interpolates the per-size optima, 'power' uses the fit."""
    if rule == "table":
        return {"rule": "table", "table": ",".join(f"{int(n)}:{float(p)!r}" for n, p in sorted(zip(ns, peaks)))}
    if rule == "power":
        n_ref = int(ns[0])  # a parameter count (config.lr.n_ref is an int)
        return {"rule": "power", "n_ref": n_ref, "peak": float(fit["a"] * n_ref ** -fit["alpha"]),
                "alpha": float(fit["alpha"])}
    raise InputError(f"--rule={rule!r} must be one of {list(RULES)}")


def members_signature(cfg: Any) -> list[dict]:
    return [{"name": m.name, "non_embedding_params": int(layout.non_embedding_param_count(m.model))}
            for m in config_lib.members(cfg)]


def load_rule_file(path: str | Path, cfg: Any) -> dict:
    """The rule file, checked against cfg's members; InputError naming the file otherwise."""
    p = Path(path)
    try:
        rule = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"--lr_rule_file={p}: no such file (write one with experiments/lr_sweep.py)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"--lr_rule_file={p}: not a JSON rule file ({e})") from None
    if not isinstance(rule, dict) or "lr" not in rule or "members" not in rule:
        raise InputError(f"--lr_rule_file={p}: needs 'members' and 'lr' (written by experiments/lr_sweep.py)")
    want = members_signature(cfg)
    if rule["members"] != want:
        got = [(m.get("name"), m.get("non_embedding_params")) for m in rule["members"]]
        raise InputError(f"--lr_rule_file={p} was fitted for members {got}, but the config has "
                         f"{[(m['name'], m['non_embedding_params']) for m in want]}; rerun lr_sweep.py on this config")
    if rule["lr"].get("rule") not in RULES:
        raise InputError(f"--lr_rule_file={p}: lr.rule={rule['lr'].get('rule')!r} must be one of {list(RULES)}")
    return rule


def apply_rule_file(cfg: Any, path: str) -> Any:
    """The config with the fitted rule of `path` (written by lr_sweep.py); InputError if it does not fit."""
    import ml_collections  # noqa: PLC0415


    rule = load_rule_file(path, cfg)
    out = ml_collections.ConfigDict(cfg.to_dict())
    for key, value in rule["lr"].items():
        out.lr[key] = value
    config_lib.validate(out)
    return out
