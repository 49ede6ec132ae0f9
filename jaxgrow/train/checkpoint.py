"""Orbax checkpoints: params + optimizer state + a JSON `meta` item (step, data-iterator state,
resolved config, layout version, per-leaf checksums).

Integrity: orbax commits a step atomically (temporary directory, then rename), so a write killed
half-way never appears as a step. On top of that, every save records a checksum per array (the
uint32 sum of its bits, computed on device, order independent, so it matches under any sharding);
restore recomputes them. A step that fails to restore or whose checksums differ is reported,
moved aside to `<dir>/corrupt/<step>` (kept, never deleted) and the next older step is tried.

Three kinds of directory:
- local: orbax on the path (temporary directory, then rename); async saves when asked.
- gs:// (written straight to the bucket from every host): orbax/tensorstore write each process's shards in place
  and process 0 writes `<step>/commit_success.txt` last, after a barrier (orbax's commit-file atomicity, the
  default on GCS); a step exists only when its marker does, so a save killed half-way leaves a prefix that is
  ignored, and orbax removes it. Saves are asynchronous by default (checkpoint.async_save_remote): training goes
  on while the previous step uploads, and the next save or the end of the stage waits for it. Any number of
  processes; restore onto any topology.
- s3:// (staged): orbax 0.12.8 cannot write s3:// itself (it normalises `s3://b/x` to `s3:/b/x` and then writes
  a local `./s3:/...` folder), so orbax runs on a local staging directory and jaxgrow mirrors it: a save writes
  the step locally, uploads every file of it, and only then writes `<step>/COMMITTED` (a JSON list of the step's
  files and sizes) as the last object. Restore downloads exactly the listed files (sizes checked, the optimizer
  state only when it is restored); single process only (the staging disk is not shared). Multi-host runs refuse
  an s3:// workdir with one line naming gs:// or a shared filesystem.
In all three the rolling `keep` deletes only committed steps, quarantine copies a damaged step to corrupt/<step>
and retires the original's commit first, and params-only restores (eval, export, sample) read no optimizer state.

A failed background save fails the run fast, on every host. Orbax keeps an async save's error to itself until the next
save or the end waits for it, and with several processes the healthy hosts then wait in orbax's barriers (20 minutes
each) for the failed one, which waits for them in another: the whole pod sat idle. Here each process records its own
failure the moment its background save thread ends (sticky, without consuming orbax's copy), `check_saves` reads it at
every step boundary (a local read; with several processes the flags are combined by one small all-gather at log
boundaries), and every wait (the next save, the end of a stage) first polls all processes' flags until every
process's save has finished, so no process enters orbax's barriers while another has failed. Then SaveFailed (a
faults.HardExit) ends every process with one line naming the checkpoint path, without joining orbax's threads; the
rerun resumes from the last committed step.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from jaxgrow import storage
from jaxgrow.model import layout
from jaxgrow.train import faults


log = logging.getLogger("jaxgrow")


ITEMS = ("params", "opt_state", "meta")
COMMIT_MARKER = "COMMITTED"  # remote steps: written last, lists the step's files (see the module doc)


class CorruptCheckpoint(RuntimeError):
    """A step whose files fail their checksums or cannot be parsed (not an I/O error or OOM)."""


class SaveFailed(faults.HardExit):
    """A background (async) checkpoint save failed on some process: raised on every process at the same step
    boundary; the CLI ends each with this one line (exit 1) without waiting for orbax's threads."""


_ASYNC_SAVES = [0]  # asynchronous saves started by this process (JAXGROW_FAULT=checkpoint_write_error:<n>)
_ASYNC_SAVES_LOCK = threading.Lock()
AGREE_POLL_S = 0.1  # while waiting for the processes' in-flight saves: one all-gather of their states per poll


class _InjectedWriteError:
    """A commit future that fails a moment after the save started, as a storage write error does (fault injection)."""

    def __init__(self, directory: Any):
        self.directory = directory

    def result(self, timeout: float | None = None) -> None:
        time.sleep(0.2)
        raise OSError(errno.EIO, f"injected write error (JAXGROW_FAULT=checkpoint_write_error) in {self.directory}")

    def cancel(self) -> bool:
        return False


def _agree(values: list[int]) -> list[list[int]]:
    """Every process's `values` (one small all-gather; all processes must call it at the same point)."""
    import numpy as np  # noqa: PLC0415
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int32))).reshape(
        jax.process_count(), len(values)).tolist()


@dataclasses.dataclass(frozen=True)
class Meta:
    """What every checkpoint records besides the arrays (the one place its fields are listed).

    `save` adds step, layout_version and checksums; `read_meta`/`restore` return the stored dict
    (`Meta.from_json` turns it back into a Meta).
    """

    stage: int                 # stage index in the family
    member: str                # member name
    mode: str                  # progressive | independent
    model: dict                # the member's model config (ConfigDict.to_dict())
    data_state: Any = None     # the data iterator's state (None: start of the stream)
    nonfinite: int = 0         # steps skipped in this stage because loss/grads were not finite
    expanded_from: str | None = None  # `expand`: the source checkpoint directory
    imported_from: str | None = None  # `import`: the Hugging Face checkpoint directory

    def replace(self, **changes) -> "Meta":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v is not None or k == "data_state"}

    @classmethod
    def from_json(cls, d: dict) -> "Meta":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@jax.jit
def _checksums(tree: Any) -> list[jax.Array]:
    def one(x):
        x = jnp.asarray(x)
        if x.dtype.itemsize == 4:
            bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
        else:
            bits = x.astype(jnp.uint32)
        return jnp.sum(bits, dtype=jnp.uint32)

    return [one(x) for x in jax.tree.leaves(tree)]


def checksums(tree: Any) -> list[int]:
    """One uint32 per leaf (in tree-flatten order)."""
    return [int(v) for v in jax.device_get(_checksums(tree))]


# Status codes (tensorstore/XLA put them in the message) of failures that are not the files' fault.
_TRANSIENT_CODES = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED",
                    "UNAUTHENTICATED", "Out of memory", "out of memory")


def is_damage(e: BaseException) -> bool:
    """True if a restore error means the step's files are damaged (bad format, missing or misshapen
    arrays, unparsable metadata); False for I/O errors, permissions and out-of-memory, which must
    propagate and leave the step in place."""
    for err in (e, e.__cause__, e.__context__):
        if err is None:
            continue
        if isinstance(err, MemoryError):
            return False
        if isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
            return False
        if any(code in str(err) for code in _TRANSIENT_CODES):
            return False
    return True


def _staging_dir() -> Path:
    """A fresh local staging directory of this process; those of dead processes (a SIGKILL leaves up to a whole
    checkpoint behind) are removed first."""
    storage.sweep_scratch("ckpt-staging")
    return storage.scratch_dir("ckpt-staging")


GCS_MARKER = "commit_success.txt"  # orbax's commit file on GCS (atomicity_types.COMMIT_SUCCESS_FILE)


def kind(directory: str | Path | epath.Path) -> str:
    """'local', 'gs' (written straight from every host) or 'staged' (s3:// and other object stores)."""
    scheme = storage.scheme(directory)
    return "local" if not scheme else ("gs" if scheme == "gs" else "staged")


class Checkpoints:
    """A directory of step checkpoints with a rolling `keep` policy (keep=None keeps all).

    `directory` may be local, gs:// (orbax writes the bucket itself) or s3:// (staged locally); see the module
    doc. async_save: asynchronous saves (the default on gs://, where a save uploads the whole state)."""

    def __init__(self, directory: str | Path | epath.Path, keep: int | None = None, async_save: bool = False):
        self.kind = kind(directory)
        self.remote = self.kind == "staged"  # the staged mirror (s3://): uploads and downloads through staging
        self.keep = keep
        if self.remote:
            if jax.process_count() > 1:
                raise storage.StorageError(
                    f"{directory}: s3:// checkpoints are staged through local disk by one process (orbax 0.12.8 "
                    "cannot write s3:// itself); a multi-host run needs a gs:// bucket or a shared filesystem")
            self.directory = epath.Path(str(directory))
            self._staging = _staging_dir()
            local_dir, keep, async_save = self._staging, None, False  # staging holds at most one step at a time
        elif self.kind == "gs":
            self.directory = local_dir = epath.Path(str(directory))
        else:
            self.directory = local_dir = Path(directory).absolute()  # orbax refuses relative paths
            self._quarantine_incomplete()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True, create=True)
        self._mgr = ocp.CheckpointManager(local_dir, options=options, item_names=ITEMS)
        self.async_save = async_save
        self._inflight_step: int | None = None           # the step of the last asynchronous save started
        self._failure: tuple[int | None, BaseException] | None = None  # this process's failed background save
        self._async = self._watch_async_saves() if async_save else None

    # -- failed background saves (see the module doc) ------------------------------------------

    def _watch_async_saves(self) -> Any:
        """Records this process's failed background save the moment orbax's save thread ends (orbax keeps the error
        until the next wait, which then consumes it) and injects JAXGROW_FAULT=checkpoint_write_error:<n>. Returns
        orbax's async manager, or None when this orbax lacks the internals (then failures surface at the next wait,
        as orbax raises them)."""
        manager = getattr(getattr(self._mgr, "_checkpointer", None), "_async_manager", None)
        if manager is None or not all(hasattr(manager, a) for a in ("_thread_func", "start_async_commit",
                                                                      "_exception", "_thread")):
            log.warning("orbax %s: cannot watch background saves; a failed one surfaces at the next save",
                        getattr(ocp, "__version__", "?"))
            return None
        thread_func, start = manager._thread_func, manager.start_async_commit

        def recording_thread_func(directory, commit_futures, on_commit_callback):
            thread_func(directory, commit_futures, on_commit_callback)
            error = manager._exception  # read before orbax's finalize thread (joined on this one) consumes it
            if error is not None and not getattr(manager, "_cancel_requested", False):
                self._failure = (self._inflight_step, error)

        def injecting_start(directory, commit_futures, on_commit_callback):
            with _ASYNC_SAVES_LOCK:
                _ASYNC_SAVES[0] += 1
                n = _ASYNC_SAVES[0]
            if faults.fault_count("checkpoint_write_error") == n:
                commit_futures = [_InjectedWriteError(directory), *commit_futures]
            return start(directory, commit_futures, on_commit_callback)

        manager._thread_func = recording_thread_func
        manager.start_async_commit = injecting_start
        finalize = self._mgr._finalize

        def recording_finalize(*args, **kwargs):
            try:
                return finalize(*args, **kwargs)
            except BaseException as e:
                if self._failure is None:
                    self._failure = (self._inflight_step, e)
                raise

        self._mgr._finalize = recording_finalize
        return manager

    def _save_state(self) -> int:
        """This process's background save: 0 none in flight (the last one committed), 1 in flight, 2 failed."""
        if self._failure is not None:
            return 2
        thread = getattr(self._async, "_thread", None)
        return 1 if thread is not None and thread.is_alive() else 0

    def _raise_failed(self, failed_processes: list[int]) -> None:
        step, error = self._failure if self._failure is not None else (self._inflight_step, None)
        path = storage.join(self.directory, str(step)) if step is not None else self.directory
        where = (f" on process {', '.join(map(str, failed_processes))}" if jax.process_count() > 1 else "")
        cause = ""
        if error is not None:
            text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            cause = f" ({type(error).__name__}: {text})" if text else f" ({type(error).__name__})"
        raise SaveFailed(f"the background save of checkpoint {path} failed{where}{cause}; the last committed step of "
                         f"{self.directory} is kept: rerun the same command to resume from it")

    def check_saves(self, agree: bool = False) -> None:
        """At a step boundary: SaveFailed when a background save failed. agree=False reads this process's state only
        (no host sync); agree=True combines every process's (one small all-gather: every process calls it at the
        same step). Single-process runs never need the collective."""
        if not self.async_save:
            return
        if jax.process_count() > 1:
            if not agree:
                return  # one process alone must not stop: the others would wait for it in the next collective
            states = [row[0] for row in _agree([self._save_state()])]
        else:
            states = [self._save_state()]
        if 2 in states:
            self._raise_failed([i for i, v in enumerate(states) if v == 2])

    def _settle(self) -> None:
        """Waits for the background save of every process (SaveFailed on every process when any failed), then
        orbax's own wait. With several processes the states are polled with one all-gather per AGREE_POLL_S until no
        process has a save in flight, so none enters orbax's barriers while another has failed."""
        if not self.async_save:
            self._mgr.wait_until_finished()
            return
        multi = jax.process_count() > 1
        if multi and self._async is not None:
            while True:
                states = [row[0] for row in _agree([self._save_state()])]
                if 2 in states:
                    self._raise_failed([i for i, v in enumerate(states) if v == 2])
                if 1 not in states:
                    break
                time.sleep(AGREE_POLL_S)
        try:
            self._mgr.wait_until_finished()
            ok = True
        except Exception as e:  # noqa: BLE001  (the finalize step failed: it is the save's failure)
            if self._failure is None:
                self._failure = (self._inflight_step, e)
            ok = False
        if multi:
            oks = [row[0] for row in _agree([int(ok)])]
            if not all(oks):
                self._raise_failed([i for i, v in enumerate(oks) if not v])
        elif not ok:
            self._raise_failed([0])

    def _quarantine_incomplete(self) -> None:
        """A finalized step directory that lacks an item (a deleted or lost `meta`, say) is not a checkpoint: it is
        moved aside to corrupt/<step> (kept, never deleted) so the step can be saved again instead of failing with
        StepAlreadyExistsError on every rerun."""
        if jax.process_index() != 0 or not self.directory.is_dir():
            return
        for d in sorted(self.directory.iterdir()):
            if d.is_dir() and d.name.isdigit() and not all((d / item).exists() for item in ITEMS):
                dest = self.directory / "corrupt" / d.name
                log.warning("checkpoint %s lacks %s; moved to %s", d, [i for i in ITEMS if not (d / i).exists()], dest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.move(str(d), str(dest))

    def steps(self) -> list[int]:
        if self.remote:
            return committed_steps(self.directory)
        if self.kind == "gs":
            self._mgr.reload()  # another process (or a killed one) may have committed or removed steps
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, params: Any, opt_state: Any, meta: Meta) -> None:
        """Saves (blocking unless async_save; the staged s3:// mirror always blocks)."""
        meta = dict(meta.to_json(), step=int(step), layout_version=layout.LAYOUT_VERSION,
                    checksums={"params": checksums(params), "opt_state": checksums(opt_state)})
        self._settle()  # the previous save, on every process (a failed one raises SaveFailed everywhere)
        self._inflight_step = int(step)
        self._mgr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)), force=True)
        if self.remote:
            self._mgr.wait_until_finished()
            self._upload(step)

    def _upload(self, step: int) -> None:
        """Mirrors staged step `step` to the bucket, commits it, applies `keep`, clears staging."""
        remote = self.directory / str(step)
        if jax.process_index() == 0:
            marker = remote / COMMIT_MARKER
            if marker.exists():
                marker.unlink()  # re-saving a committed step: it stops being a step before it changes
            storage.remove_tree(remote)  # leftovers of an upload killed half-way (never committed)
            files = storage.upload_tree(self._staging / str(step), remote)
            storage.atomic_write_text(marker, json.dumps({"step": int(step), "files": files}, indent=1))
            if self.keep is not None:
                committed = committed_steps(self.directory)
                for old in committed[:-self.keep]:  # only committed steps, never the newest ones
                    (self.directory / str(old) / COMMIT_MARKER).unlink()
                    storage.remove_tree(self.directory / str(old))
        self._clear_staging()

    def _clear_staging(self) -> None:
        for p in self._staging.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        self._mgr.reload()

    def _download(self, step: int, params_only: bool = False) -> None:
        """Brings committed remote step `step` into staging (only the files its marker lists; without
        the optimizer state when only the params are restored: eval, export, sample).

        An unreadable marker or a listed file that is missing or short raises CorruptCheckpoint (the
        step's files are damaged); any other error (network, credentials) propagates unchanged, so a
        flaky store never gets a good step quarantined."""
        self._clear_staging()
        remote = self.directory / str(step)
        try:
            files = json.loads((remote / COMMIT_MARKER).read_text())["files"]
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpoint(f"unreadable {COMMIT_MARKER} marker: {e}") from e
        if params_only:
            files = {rel: size for rel, size in files.items() if not rel.startswith("opt_state/")}
        try:
            storage.download_tree(remote, files, self._staging / str(step))
        except FileNotFoundError as e:  # a listed object is gone or shorter than recorded
            raise CorruptCheckpoint(str(e).splitlines()[0][:200]) from e
        self._mgr.reload()

    def wait(self) -> None:
        self._settle()

    def reached_preemption(self, step: int) -> bool:
        """Multi-host: every process agrees on the step to save at after a SIGTERM (jax's
        preemption sync service, started by jax.distributed.initialize)."""
        return self._mgr.reached_preemption(step)

    def read_meta(self, step: int) -> dict:
        if self.remote:  # the meta item is one small JSON object (orbax's JsonSave file): read it in place
            remote = self.directory / str(step)
            if not (remote / COMMIT_MARKER).exists():
                raise FileNotFoundError(f"{remote}: no committed checkpoint")
            return json.loads((remote / "meta" / "metadata").read_text())
        return self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_params: Any, abstract_opt: Any | None) -> tuple[Any, Any, dict]:
        """Restores one step onto the shardings in the abstract trees (ShapeDtypeStructs).

        abstract_opt=None restores the params only. Raises CorruptCheckpoint on any mismatch.
        """
        try:
            if self.remote:  # missing/short listed files are damage; a transport error propagates (never quarantines)
                self._download(step, params_only=abstract_opt is None)
            try:
                meta = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                if meta.get("layout_version") != layout.LAYOUT_VERSION:
                    raise CorruptCheckpoint(f"layout version {meta.get('layout_version')} != {layout.LAYOUT_VERSION}")
                items = {"params": ocp.args.StandardRestore(abstract_params)}
                if abstract_opt is not None:
                    items["opt_state"] = ocp.args.StandardRestore(abstract_opt)
                restored = self._mgr.restore(step, args=ocp.args.Composite(**items))
            except CorruptCheckpoint:
                raise
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                if not is_damage(e):
                    raise  # an I/O error or out of memory says nothing about the files: never quarantine
                raise CorruptCheckpoint(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from e
        finally:
            if self.remote:
                self._clear_staging()  # restored arrays live in memory; the bucket stays the source
        params, opt_state = restored["params"], restored.get("opt_state")
        if checksums(params) != meta["checksums"]["params"]:
            raise CorruptCheckpoint("params checksum mismatch")
        if opt_state is not None and checksums(opt_state) != meta["checksums"]["opt_state"]:
            raise CorruptCheckpoint("optimizer-state checksum mismatch")
        return params, opt_state, meta

    def restore_latest_good(self, abstract_params: Any, abstract_opt: Any | None) -> tuple[Any, Any, dict] | None:
        """Newest step that restores cleanly; corrupt ones are moved aside with a warning."""
        for step in reversed(self.steps()):
            try:
                return self.restore(step, abstract_params, abstract_opt)
            except CorruptCheckpoint as e:
                log.warning("checkpoint %s/%d is corrupt (%s); moved to %s/corrupt/%d, trying an older one",
                            self.directory, step, e, self.directory, step)
                self._quarantine(step)
        return None

    def quarantine(self, step: int) -> None:
        """Moves step `step` aside to <dir>/corrupt/<step> (kept for inspection, never deleted)."""
        self._quarantine(step)

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            src, dest = storage.join(self.directory, str(step)), storage.join(self.directory, "corrupt", str(step))
            if self.kind == "local":
                Path(str(dest)).parent.mkdir(parents=True, exist_ok=True)
                if Path(str(dest)).exists():
                    shutil.rmtree(str(dest))
                shutil.move(str(src), str(dest))
            else:
                storage.remove_tree(dest)
                # copy everything (marker included, so the copy stays inspectable), then retire the
                # original marker first: from then on the step no longer exists, even if killed here
                for rel in storage.list_files(src):
                    storage.copy_file(src / rel, dest / rel)
                (src / (COMMIT_MARKER if self.remote else GCS_MARKER)).unlink(missing_ok=True)
                storage.remove_tree(src)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            multihost_utils.sync_global_devices(f"jaxgrow-quarantine-{step}")
        self._mgr.reload()

    def close(self) -> None:
        self._settle()
        self._mgr.close()
        if self.remote:
            shutil.rmtree(self._staging, ignore_errors=True)


def committed_steps(directory: epath.Path | str) -> list[int]:
    """Steps of an object-store checkpoint directory whose commit marker is present (gs://: orbax's
    commit_success.txt; s3://: the staged mirror's COMMITTED)."""
    storage.refresh(directory)  # another process may have committed or removed steps since
    d = epath.Path(str(directory))
    if not d.exists():
        return []
    marker = GCS_MARKER if kind(directory) == "gs" else COMMIT_MARKER
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / marker).exists())


def has_checkpoint(directory: str | Path | epath.Path) -> bool:
    """True if the directory holds at least one committed step (no manager is created)."""
    if storage.is_remote(directory):
        return bool(committed_steps(directory))
    d = Path(directory)
    if not d.is_dir():
        return False
    return any(p.is_dir() and p.name.isdigit() and all((p / item).exists() for item in ITEMS) for p in d.iterdir())


def step_is_committed(directory: str | Path | epath.Path, step: int) -> bool:
    """Whether `directory` holds a whole step `step` (every item; an object store: its commit marker)."""
    if storage.is_remote(directory):
        return step in committed_steps(directory)
    d = Path(str(directory)) / str(step)
    return d.is_dir() and all((d / item).exists() for item in ITEMS)


def copy_step(src_dir: str | Path | epath.Path, dst_dir: str | Path | epath.Path, step: int) -> None:
    """Copies committed step `step` of one checkpoint directory into another, all-or-nothing: locally into a
    temporary sibling that is renamed into place, remotely every object first and the commit marker last."""
    src, dst = storage.join(src_dir, str(step)), storage.join(dst_dir, str(step))
    files = storage.list_files(src)
    if storage.is_remote(dst):
        storage.remove_tree(dst)
        for rel in sorted(files, key=lambda r: r in (COMMIT_MARKER, GCS_MARKER)):  # the commit marker last
            storage.copy_file(storage.join(src, rel), storage.join(dst, rel))
        return
    dst = Path(str(dst))
    tmp = dst.with_name(f"{dst.name}.tmp-copy")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(str(src), tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
