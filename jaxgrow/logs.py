"""Logging shared by the CLI and the experiment scripts: `jaxgrow: message` lines on stderr, and
the training metrics log (metrics.jsonl + TensorBoard)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

NOISY = ("absl", "orbax", "jax._src", "tensorflow")


def setup(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="jaxgrow: %(message)s", stream=sys.stderr, force=True)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


class MetricsLog:
    """metrics.jsonl (one JSON object per line) + TensorBoard event files; process 0 only.

    TensorBoard scalars are tagged `<member>/<key>` and written at the record's step counted over
    the whole family: `step` plus the steps of the stages before it (`step_offset`, recorded by the
    loop; 0 for the first stage), so every stage's curve continues where the previous one ended.
    """

    def __init__(self, workdir: Path, enabled: bool | None = None):
        if enabled is None:
            import jax  # noqa: PLC0415

            enabled = jax.process_index() == 0
        self.enabled = enabled
        self._tb = None
        if self.enabled:
            self._path = Path(workdir, "metrics.jsonl")
            from tensorboardX import SummaryWriter  # noqa: PLC0415

            self._tb = SummaryWriter(str(Path(workdir, "tb")))

    @staticmethod
    def global_step(record: dict) -> int:
        return int(record.get("step", 0)) + int(record.get("step_offset", 0))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = self.global_step(record)
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "step_offset",
                                                                                             "stage"):
                self._tb.add_scalar(f"{record.get('member', 'run')}/{key}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
