"""Logging shared by the CLI and the experiment scripts: `jaxgrow: message` lines on stderr, and
the training metrics log (metrics.jsonl + TensorBoard)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

from jaxgrow import storage


# Libraries whose INFO lines (request retries, credential lookups, compilation caches, ...) are not the user's
# business; `--verbosity=1` (absl's flag) lets them through.
NOISY = ("absl", "orbax", "jax._src", "jax", "tensorflow", "botocore", "boto3", "s3fs", "gcsfs", "fsspec", "aiobotocore",
         "urllib3", "google", "google.auth", "grain", "tensorstore", "asyncio", "filelock", "httpx", "huggingface_hub")


def setup(level: int = logging.INFO, verbosity: int = -1) -> None:
    """`jaxgrow: message` lines on stderr; library loggers only for what they call critical unless verbosity >= 1
    (then everything at DEBUG). A failure in a library's background thread (an orbax save on a full disk, say) is
    the run's to report, as one line through the exception boundary or the loop: its thread's traceback and the
    libraries' error logs about it would otherwise come first, dozens of lines of them, so they go to DEBUG too."""
    verbose = verbosity >= 1
    logging.basicConfig(level=logging.DEBUG if verbose else level, format="jaxgrow: %(message)s",
                        stream=sys.stderr, force=True)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    threading.excepthook = _thread_excepthook if not verbose else threading.__excepthook__
    sys.unraisablehook = _unraisable_hook if not verbose else sys.__unraisablehook__


def _thread_excepthook(args) -> None:
    logging.getLogger("jaxgrow").debug("exception in thread %s", getattr(args.thread, "name", "?"),
                                       exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _unraisable_hook(unraisable) -> None:
    logging.getLogger("jaxgrow").debug("ignored exception in %r: %r", unraisable.object, unraisable.exc_value)


class MetricsLog:
    """metrics.jsonl (one JSON object per line) + TensorBoard event files; process 0 only.

    TensorBoard scalars are tagged `<member>/<key>` and written at the record's step counted over
    the whole family: `step` plus the steps of the stages before it (`step_offset`, recorded by the
    loop; 0 for the first stage), so every stage's curve continues where the previous one ended.

    Remote workdirs (gs://, s3://): an object store has no append, so records go to parts
    metrics/NNNNN.jsonl of at most PART_RECORDS records: a write rewrites only the current part (bounded bytes per
    write, not the whole history), a part is never reopened by a later process (a restart starts the next index),
    and every reader (report, tests) sees one stream through storage.read_metrics, which concatenates
    metrics.jsonl and the parts in order. As durable as the local append: a record logged before a checkpoint is
    stored before it. TensorBoard writes to a local mirror directory whose event files are uploaded to
    <workdir>/tb/ at most every TB_UPLOAD_SECONDS and on close (a kill loses at most that much of the TensorBoard
    mirror; the metrics keep every record).
    """

    TB_UPLOAD_SECONDS = 60.0
    PART_RECORDS = 200

    def __init__(self, workdir, enabled: bool | None = None):
        if enabled is None:
            import jax  # noqa: PLC0415

            enabled = jax.process_index() == 0
        self.enabled = enabled
        self._tb = None
        self._remote = storage.is_remote(workdir)
        if self.enabled:
            self._path = storage.join(workdir, "metrics.jsonl")
            from tensorboardX import SummaryWriter  # noqa: PLC0415

            if self._remote:
                parts = storage.list_files(storage.join(workdir, storage.METRICS_PARTS))
                numbers = [int(p.split(".")[0]) for p in parts if p.endswith(".jsonl") and p.split(".")[0].isdigit()]
                self._part = max(numbers, default=-1) + 1  # a new process never rewrites an earlier part
                self._part_lines: list[bytes] = []
                self._parts_dir = storage.join(workdir, storage.METRICS_PARTS)
                self._tb_remote = storage.join(workdir, "tb")
                storage.sweep_scratch("tb")  # mirrors of killed runs (their events were uploaded up to a minute ago)
                self._tb_local = str(storage.scratch_dir("tb"))
                self._tb_uploaded = time.monotonic()
                # event files are named by the second and host: a suffix keeps a quick restart's
                # file from overwriting the previous process's object in the bucket
                self._tb = SummaryWriter(self._tb_local, filename_suffix=f".{uuid.uuid4().hex[:8]}")
            else:
                local = Path(self._path)
                if local.exists():  # a record torn by a kill or a full disk is cut off, so appends stay whole
                    data = local.read_bytes()
                    if data and not data.endswith(b"\n"):
                        with open(local, "r+b") as f:
                            f.truncate(len(_without_torn_tail(data)))
                self._tb = SummaryWriter(str(local.parent / "tb"))

    @staticmethod
    def global_step(record: dict) -> int:
        return int(record.get("step", 0)) + int(record.get("step_offset", 0))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if self._remote:
            if len(self._part_lines) >= self.PART_RECORDS:
                self._part, self._part_lines = self._part + 1, []
            self._part_lines.append(line.encode("utf-8"))
            storage.atomic_write_bytes(storage.join(self._parts_dir, f"{self._part:05d}.jsonl"),
                                       b"".join(self._part_lines))
        else:
            with open(self._path, "a") as f:
                f.write(line)
        step = self.global_step(record)
        # an eval record repeats the step's train_flops (the report plots eval loss against it): TensorBoard gets it
        # once, from the train record
        skip = ("step", "step_offset", "stage") + (("train_flops",) if "eval_loss" in record or "bench_suite" in record
                                                   else ())
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in skip:
                self._tb.add_scalar(f"{record.get('member', 'run')}/{key}", value, step)
        self._tb.flush()
        if self._remote and time.monotonic() - self._tb_uploaded >= self.TB_UPLOAD_SECONDS:
            self._upload_tb()

    def drop_after(self, stage: int, step: int) -> int:
        """Removes the records of `stage` past `step` (what a killed run logged after its last checkpoint, which the
        resumed run logs again), so the metrics keep one record per step; returns how many were dropped. Local:
        metrics.jsonl rewritten atomically; a bucket workdir: each part that holds such records."""
        if not self.enabled:
            return 0
        stale = lambda r: r.get("stage") == stage and int(r.get("step", -1)) > step  # noqa: E731
        paths = [self._path] if not self._remote else [
            storage.join(self._parts_dir, name) for name in sorted(storage.list_files(self._parts_dir))
            if name.endswith(".jsonl")] if storage.join(self._parts_dir).exists() else []
        dropped = 0
        for path in paths:
            if not storage.join(path).exists():
                continue
            records, _ = storage.read_jsonl(path)
            kept = [r for r in records if not stale(r)]
            if len(kept) != len(records):
                dropped += len(records) - len(kept)
                storage.atomic_write_bytes(storage.join(path), b"".join((json.dumps(r) + "\n").encode() for r in kept))
        if self._remote:  # this process's own part, as it will next be rewritten
            self._part_lines = [line for line in self._part_lines if not stale(json.loads(line))]
        return dropped

    def _upload_tb(self) -> None:
        storage.upload_tree(self._tb_local, self._tb_remote)
        self._tb_uploaded = time.monotonic()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            if self._remote:
                self._upload_tb()
                shutil.rmtree(self._tb_local, ignore_errors=True)
            self._tb = None


def _without_torn_tail(data: bytes) -> bytes:
    """JSON-lines bytes without a final record that has no newline (torn mid-write: it was never completed)."""
    if not data or data.endswith(b"\n"):
        return data
    return data[:data.rfind(b"\n") + 1]
