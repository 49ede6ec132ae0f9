"""One writer per workdir: an exclusive lock object W/lock.json naming its holder (host, pid, start time, command)
with a heartbeat.

Local (and shared) filesystems: created with O_CREAT | O_EXCL. Object stores: created with a precondition that it
does not exist yet (fsspec `pipe_file(mode="create")`: S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`), so of two
racing writers exactly one wins. A second writer is refused with one line naming the holder. A lock whose holder is
dead is taken over with a warning: on the same host when its pid no longer exists, elsewhere when its heartbeat
(rewritten every HEARTBEAT_S by a daemon thread) is older than LEASE_S. Released when the run ends (and at exit).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from etils import epath

from jaxgrow import storage
from jaxgrow.config import InputError


log = logging.getLogger("jaxgrow")

LOCK_FILE = "lock.json"
HEARTBEAT_S = 30.0
LEASE_S = 300.0  # a holder on another host whose heartbeat is older than this is presumed dead


class WorkdirBusy(InputError):
    """Another live process holds the workdir."""


def _holder(path: epath.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, OSError):
        return {}  # torn (a kill mid-write): nobody can be holding it through a record it could not finish


def _alive(holder: dict) -> bool:
    if not holder:
        return False
    if holder.get("host") == socket.gethostname():
        return storage.local_process_alive(holder.get("pid"))
    return time.time() - float(holder.get("heartbeat", 0)) < LEASE_S


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {started}"


def check_free(workdir: Any) -> None:
    """Refuses (WorkdirBusy) when a live process holds the workdir; writes nothing."""
    path = storage.join(workdir, LOCK_FILE)
    holder = _holder(path)
    if holder is not None and _alive(holder) and not _is_ours(holder):
        raise WorkdirBusy(f"--workdir={workdir} is in use by {_describe(holder)} ({path}); wait for that run to end "
                          "or stop it (a lock whose process died is taken over automatically)")


_HELD: dict[str, "WorkdirLock"] = {}


def _is_ours(holder: dict) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


class WorkdirLock:
    def __init__(self, workdir: Any, command: str = ""):
        self.path = storage.join(workdir, LOCK_FILE)
        self.workdir = workdir
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                       "heartbeat": time.time(), "command": command, "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _create(self) -> bool:
        data = json.dumps(self.record).encode()
        if storage.is_remote(self.path):
            import fsspec  # noqa: PLC0415

            fs, _, (p,) = fsspec.get_fs_token_paths(str(self.path))
            try:
                fs.pipe_file(p, data, mode="create")
            except (FileExistsError, OSError) as e:
                if isinstance(e, FileExistsError) or "PreconditionFailed" in str(e) or "412" in str(e):
                    return False
                raise
            return True
        try:
            fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> "WorkdirLock":
        for _ in range(3):
            if self._create():
                break
            holder = _holder(self.path)
            if holder is None:
                continue  # released between our attempt and the read: try again
            if _is_ours(holder):
                self.record = holder  # this process already holds it (e.g. expand then train in one process)
                break
            if _alive(holder):
                raise WorkdirBusy(f"--workdir={self.workdir} is in use by {_describe(holder)} ({self.path}); wait for "
                                  "that run to end or stop it (a lock whose process died is taken over automatically)")
            log.warning("taking over the lock of %s: its holder (%s) is gone", self.workdir, _describe(holder)
                        if holder else "a torn lock record")
            self.path.unlink(missing_ok=True)
        else:
            raise WorkdirBusy(f"--workdir={self.workdir}: could not take {self.path} (another process keeps taking it)")
        _HELD[str(self.path)] = self
        self._thread = threading.Thread(target=self._beat, name="jaxgrow-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                holder = _holder(self.path)
                if not holder or holder.get("token") != self.record["token"]:
                    log.warning("lost the lock of %s (it was taken over); stopping the heartbeat", self.workdir)
                    return
                self.record["heartbeat"] = time.time()
                storage.atomic_write_text(self.path, json.dumps(self.record))
            except Exception as e:  # noqa: BLE001  (a flaky store must not kill the run through its heartbeat)
                log.warning("lock heartbeat of %s failed (%s); retrying", self.workdir, type(e).__name__)

    def release(self) -> None:
        self._stop.set()
        _HELD.pop(str(self.path), None)
        try:
            holder = _holder(self.path)
            if holder and holder.get("token") == self.record["token"]:
                self.path.unlink(missing_ok=True)
        except Exception as e:  # noqa: BLE001  (an unreachable store at exit: the lease expires by itself)
            log.warning("could not release the lock of %s (%s)", self.workdir, type(e).__name__)


def acquire(workdir: Any, command: str = "") -> WorkdirLock:
    """Takes the workdir's lock (after validation, before the first write); idempotent within a process."""
    held = _HELD.get(str(storage.join(workdir, LOCK_FILE)))
    return held if held is not None else WorkdirLock(workdir, command).acquire()


def release(workdir: Any) -> None:
    held = _HELD.get(str(storage.join(workdir, LOCK_FILE)))
    if held is not None:
        held.release()


@contextlib.contextmanager
def held(workdir: Any, command: str = ""):
    """The workdir's lock for the block (released after it unless this process held it already)."""
    already = str(storage.join(workdir, LOCK_FILE)) in _HELD
    lk = acquire(workdir, command)
    try:
        yield lk
    finally:
        if not already:
            lk.release()


@atexit.register
def release_all() -> None:
    for held in list(_HELD.values()):
        held.release()
