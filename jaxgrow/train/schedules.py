"""Learning-rate schedules whose peak depends on model size (optax-compatible callables).

N is always the *non-embedding* parameter count (`config.non_embedding_param_count`): parameters
outside the token embedding and the LM head, as in Kaplan et al. (2020).

Peak rules:
    constant  peak
    power     peak * (N / n_ref) ** -alpha
    kaplan    0.003239 - 0.0001395 * ln(N)           (Kaplan et al. 2020, eq. D.1)
    table     log-log interpolation of (N, LR) pairs, clamped at both ends (default: GPT-3's)
Shape: linear warmup from ~0 to the peak at `warmup_steps`, then cosine, linear or WSD
(warmup-stable-decay) down to `min_lr_ratio * peak`, reached at `total_steps`.
"""

from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp
import numpy as np


# GPT-3 (Brown et al. 2020, table 2.1): non-embedding-ish size -> peak LR.
GPT3_TABLE = ((125e6, 6e-4), (350e6, 3e-4), (760e6, 2.5e-4), (1.3e9, 2e-4), (2.7e9, 1.6e-4),
              (6.7e9, 1.2e-4), (13e9, 1e-4))

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def parse_table(table: str) -> tuple[tuple[float, float], ...]:
    """'gpt3' or 'N:lr,N:lr,...' -> sorted pairs."""
    if table == "gpt3":
        return GPT3_TABLE
    try:
        pairs = tuple(sorted((float(n), float(lr)) for n, lr in (item.split(":") for item in table.split(","))))
    except ValueError:
        raise ValueError(f"lr.table={table!r} must be 'gpt3' or 'N:lr,N:lr,...'") from None
    if not pairs or any(n <= 0 or lr <= 0 for n, lr in pairs):
        raise ValueError(f"lr.table={table!r}: sizes and learning rates must be positive")
    return pairs


def peak_lr(num_params: int, rule: str, *, peak: float = 3e-3, n_ref: float = 1e6, alpha: float = 0.5,
            table: str = "gpt3") -> float:
    """Peak learning rate for a model with `num_params` non-embedding parameters."""
    n = float(num_params)
    if n <= 0:
        raise ValueError(f"num_params={num_params} must be > 0")
    if rule == "constant":
        return float(peak)
    if rule == "power":
        return float(peak * (n / n_ref) ** -alpha)
    if rule == "kaplan":
        lr = 0.003239 - 0.0001395 * math.log(n)
        if lr <= 0:
            raise ValueError(f"lr.rule='kaplan' gives a non-positive LR for N={n:.3g}; use 'power' or 'table'")
        return lr
    if rule == "table":
        pairs = parse_table(table)
        logn = np.log([p[0] for p in pairs])
        loglr = np.log([p[1] for p in pairs])
        return float(np.exp(np.interp(math.log(n), logn, loglr)))
    raise ValueError(f"lr.rule={rule!r} must be one of ['constant', 'power', 'kaplan', 'table']")


def make_lr_schedule(num_params: int, total_steps: int, *, rule: str = "constant", warmup_steps: int = 0,
                     decay: str = "cosine", min_lr_ratio: float = 0.1, wsd_decay_fraction: float = 0.2,
                     peak: float = 3e-3, n_ref: float = 1e6, alpha: float = 0.5, table: str = "gpt3") -> Schedule:
    """step -> LR for one stage. lr(warmup_steps) == peak; lr(total_steps) == min_lr_ratio * peak.

    During warmup lr(s) = peak * (s + 1) / (warmup_steps + 1), so the first update is small but not
    wasted. Steps past total_steps stay at the floor.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps} must be > 0")
    if not 0 <= warmup_steps < max(total_steps, 1):
        warmup_steps = min(max(warmup_steps, 0), total_steps - 1)
    if decay not in ("cosine", "linear", "wsd"):
        raise ValueError(f"lr.decay={decay!r} must be one of ['cosine', 'linear', 'wsd']")
    top = peak_lr(num_params, rule, peak=peak, n_ref=n_ref, alpha=alpha, table=table)
    floor = top * min_lr_ratio
    w, T = int(warmup_steps), int(total_steps)
    decay_start = w if decay != "wsd" else max(w, T - max(1, int(round(wsd_decay_fraction * (T - w)))))

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = top * (s + 1.0) / (w + 1.0)
        t = jnp.clip((s - decay_start) / max(T - decay_start, 1), 0.0, 1.0)
        if decay == "cosine":
            body = floor + (top - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        else:  # linear, and the decay phase of wsd
            body = top + (floor - top) * t
        return jnp.where(s < w, warm, body)

    return schedule
