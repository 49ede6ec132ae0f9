"""Goodput: where a run's wall time goes.

Buckets: `train` (train steps, including waiting for them at log intervals), `compile` (the first
call of a stage's train step, which traces and compiles), `checkpoint`, `eval`, `expansion` (growing
the previous member, restoring it), `data` (waiting for the next batch) and `other` (the rest of the
wall time: setup, tokenizing, restoring a resumed stage, the report). The loop blocks on the
outstanding steps before timing a checkpoint or an eval, so their time is not mistaken for steps'.

    goodput = train / wall;  badput without compile = (wall - train - compile) / wall
"""

from __future__ import annotations

import contextlib
import time


BUCKETS = ("train", "compile", "checkpoint", "eval", "expansion", "data")


class Goodput:
    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = {b: 0.0 for b in BUCKETS}

    @contextlib.contextmanager
    def measure(self, bucket: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[bucket] += time.perf_counter() - t0

    def add(self, bucket: str, seconds: float) -> None:
        self.seconds[bucket] += seconds

    def summary(self) -> dict:
        wall = max(time.perf_counter() - self.start, 1e-9)
        s = dict(self.seconds)
        s["other"] = max(0.0, wall - sum(s.values()))
        return {"wall_seconds": wall, "seconds": s, "fractions": {k: v / wall for k, v in s.items()},
                "goodput": s["train"] / wall,
                "non_train_excluding_compile": (wall - s["train"] - s["compile"]) / wall}
