"""One writer per workdir: an exclusive lock object W/lock.json naming its holder (host, pid, start time, command,
a random token) with a heartbeat.

Taking it. Local (and shared) filesystems: created with O_CREAT | O_EXCL. Object stores: created with a precondition
that it does not exist yet (fsspec `pipe_file(mode="create")`: S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`), so
of two racing writers exactly one wins. The record is read first and created only when there is none, so a store
that ignores the precondition (the GCS emulator the tests use, some S3-compatible stores) still refuses all but truly
simultaneous writers.

Is its holder alive? On the same host: its pid exists. On another host: a lease. The holder rewrites the record every
HEARTBEAT_S (a daemon thread; the record changes each time), and it is presumed dead when either
  - its record has not changed for LEASE_S, timed by the waiter's own monotonic clock from when it first read that
    record (no wall clock involved: neither host's clock skew matters), or
  - the object's modification time, which the store (or the file server) sets, is older than LEASE_S + CLOCK_SKEW_S
    by the waiter's clock (a long-dead holder is taken over at once; wrong only if the waiter's clock is more than
    CLOCK_SKEW_S off the store's). The holder's own clock (its "heartbeat" field) is never trusted.
HEARTBEAT_S = 10: one small PUT (and a GET) per 10 s is ~8,600 writes a day (cents on GCS or S3) and far below GCS's
one write per second per object. LEASE_S = 60: six beats, so a holder is declared dead only after about a minute of
silence, which a slow store (gcsfs/s3fs retry a failing request with backoff for ~30 s) or a long pause does not
reach, while a hard-killed holder (spot reclaim, node loss) is detected within about a minute (+ POLL_S).

Another holder. A live holder on the same host (a second process on this machine) is refused at once with one line
(WorkdirBusy, an InputError: exit 2). A live-looking holder on another host (a preempted job's successor started while
the old pod is still saving, or before its lease ran out) is waited for: one log line says who holds it and how long
this process waits; the record is read every POLL_S; the wait ends when the holder releases it, or takes it over with
a warning once its heartbeat has stopped. Past WAIT_S (default LEASE_S + 60 s; env JAXGROW_LOCK_WAIT_S, or
`wait_s=`) the process gives up with one line (WorkdirStillBusy, a config.TryLater: exit 75, EX_TEMPFAIL, which a
scheduler retries). `check_free` (called during validation) does this waiting and writes nothing; `acquire` (after
validation, before the first write) creates the lock, waiting again only if another process took it meanwhile; the
two share what they have observed, so a holder judged dead by `check_free` is taken over at once by `acquire`.

Releasing it. When the run ends (`release`, `held`), else at exit: `release_all` is registered to run when the
interpreter begins to shut down, before it closes its thread pools (threading's own exit hooks): afterwards an object
store request that needs a DNS lookup fails (aiohttp resolves through asyncio's default executor, which then refuses
work with "RuntimeError: cannot schedule new futures after shutdown"), which left a preempted job's lock behind for a
whole lease. `release_all` is idempotent, takes at most ~RELEASE_TIMEOUT_S (an unreachable store: the lease expires
by itself) and may be called from anywhere, a signal handler included (then os._exit). A hard kill releases nothing:
the lease does.

Testing hook: JAXGROW_HOSTNAME, when set, is the host name this process records and compares holders with (instead of
socket.gethostname()), so a test can pose as another host on one machine.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  (imported before our exit hook is registered, so ours runs first)
import contextlib
import datetime
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
from jaxgrow.config import InputError, TryLater


log = logging.getLogger("jaxgrow")

LOCK_FILE = "lock.json"
HEARTBEAT_S = 10.0  # the holder rewrites its record this often
LEASE_S = 60.0  # a holder on another host whose record has not changed for this long is presumed dead
CLOCK_SKEW_S = 60.0  # how far this host's clock may be off the store's before the mtime shortcut misjudges a holder
POLL_S = 5.0  # a waiter re-reads the record this often
RELEASE_TIMEOUT_S = 10.0  # the most a release (at exit, on SIGTERM) waits for the store
WAIT_ENV = "JAXGROW_LOCK_WAIT_S"
HOST_ENV = "JAXGROW_HOSTNAME"


def wait_budget() -> float:
    """How long to wait for a live holder on another host: JAXGROW_LOCK_WAIT_S, else LEASE_S + 60 s."""
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return LEASE_S + 60.0
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{WAIT_ENV}={text!r} is not a number of seconds") from None
    if not value >= 0:
        raise InputError(f"{WAIT_ENV}={text!r} must be >= 0 (seconds)")
    return value


class WorkdirBusy(InputError):
    """Another live process on this host holds the workdir (exit 2)."""


class WorkdirStillBusy(TryLater):
    """A live process on another host still holds the workdir after the wait (exit 75: try again later)."""


def _host() -> str:
    return os.environ.get(HOST_ENV) or socket.gethostname()


# ------------------------------------------------------------------------------------------------ the record


def _fs(path: epath.Path):
    import fsspec  # noqa: PLC0415

    fs, _, (p,) = fsspec.get_fs_token_paths(str(path))
    return fs, p


def _call(fs, name: str, *args, timeout: float | None = None):
    """fs.<name>(*args), bounded by `timeout` for an async filesystem (gcsfs, s3fs): run on fsspec's own IO loop."""
    if timeout is not None and getattr(fs, "async_impl", False) and hasattr(fs, "_" + name):
        from fsspec.asyn import sync  # noqa: PLC0415

        return sync(fs.loop, getattr(fs, "_" + name), *args, timeout=timeout)
    return getattr(fs, name)(*args)


def _read(path: epath.Path, with_mtime: bool = True, timeout: float | None = None) -> tuple[bytes | None, float | None]:
    """(the record's bytes or None when there is none, its modification time as the store set it, or None)."""
    if storage.is_remote(path):
        fs, p = _fs(path)
        fs.invalidate_cache(p)  # another process rewrites it: never a cached listing or size
        try:
            raw = _call(fs, "cat_file", p, timeout=timeout)
        except FileNotFoundError:
            return None, None
        if not with_mtime:
            return raw, None
        try:
            modified = fs.modified(p)
        except FileNotFoundError:
            return None, None
        except Exception:  # noqa: BLE001  (a store without mtimes: the observed-change rule alone decides)
            return raw, None
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=datetime.timezone.utc)
        return raw, modified.timestamp()
    try:
        with open(str(path), "rb") as f:
            return f.read(), (os.fstat(f.fileno()).st_mtime if with_mtime else None)
    except FileNotFoundError:
        return None, None


def _parse(raw: bytes) -> dict:
    try:
        holder = json.loads(raw)
        return holder if isinstance(holder, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}  # torn (a kill mid-write of a local file): judged like a holder on another host, by its mtime


def _holder(path: epath.Path) -> dict | None:
    raw, _ = _read(path, with_mtime=False)
    return None if raw is None else _parse(raw)


def _describe(holder: dict) -> str:
    if not holder:
        return "a torn lock record"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {started}"


def _is_ours(holder: dict) -> bool:
    return holder.get("host") == _host() and holder.get("pid") == os.getpid()


def _same_host(holder: dict) -> bool:
    return bool(holder) and holder.get("host") == _host()


# What this process has seen of each lock record: (its bytes, monotonic time first seen). A heartbeat changes the
# bytes; bytes unchanged for LEASE_S of our own clock mean the heartbeat has stopped.
_SEEN: dict[str, tuple[bytes, float]] = {}


def _silent_for(path: epath.Path, raw: bytes, mtime: float | None) -> float:
    """Seconds the holder has been silent, as far as this process can tell without trusting any other clock."""
    now = time.monotonic()
    seen = _SEEN.get(str(path))
    if seen is None or seen[0] != raw:
        _SEEN[str(path)] = seen = (raw, now)
    silent = now - seen[1]
    if mtime is not None:  # the store's timestamp, less the largest skew we allow between its clock and ours
        silent = max(silent, time.time() - mtime - CLOCK_SKEW_S)
    return silent


def _age(mtime: float | None) -> str:
    return f"last heartbeat {max(0.0, time.time() - mtime):.0f}s ago" if mtime is not None else "heartbeat age unknown"


def _wait_for_holder(path: epath.Path, workdir: Any, wait_s: float) -> bytes | None:
    """Waits until the lock is free (returns None) or its holder is dead (returns the record judged dead). Raises
    WorkdirBusy for a live holder on this host, WorkdirStillBusy for one on another host still alive after wait_s."""
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        raw, mtime = _read(path)
        if raw is None:
            return None
        holder = _parse(raw)
        if _is_ours(holder):
            return None
        if _same_host(holder):
            if storage.local_process_alive(holder.get("pid")):
                raise WorkdirBusy(f"--workdir={workdir} is in use by {_describe(holder)} ({path}); wait for that run "
                                  "to end or stop it (a lock whose process died is taken over automatically)")
            return raw
        silent = _silent_for(path, raw, mtime)
        if silent >= LEASE_S:
            return raw
        left = deadline - time.monotonic()
        if left <= 0:
            raise WorkdirStillBusy(
                f"--workdir={workdir} is still in use by {_describe(holder)} ({path}, {_age(mtime)}) after waiting "
                f"{wait_s:.0f}s; try again later, or stop that run (a holder whose heartbeat stops for {LEASE_S:.0f}s "
                f"is taken over automatically; {WAIT_ENV} sets the wait)")
        if not announced:
            log.warning("--workdir=%s is held by %s (%s); waiting up to %.0fs for it to end or for its heartbeat to "
                        "stop (then it is taken over)", workdir, _describe(holder), _age(mtime), wait_s)
            announced = True
        time.sleep(max(0.05, min(POLL_S, left, LEASE_S - silent + 0.05)))


def check_free(workdir: Any, wait_s: float | None = None) -> None:
    """During validation: refuses (WorkdirBusy) when a live process on this host holds the workdir; waits for a live
    holder on another host (WorkdirStillBusy past `wait_s`, default wait_budget()). Writes nothing."""
    _wait_for_holder(storage.join(workdir, LOCK_FILE), workdir, wait_budget() if wait_s is None else wait_s)


# ------------------------------------------------------------------------------------------------ holding it


_HELD: dict[str, "WorkdirLock"] = {}


class WorkdirLock:
    def __init__(self, workdir: Any, command: str = ""):
        self.path = storage.join(workdir, LOCK_FILE)
        self.workdir = workdir
        self.record = {"host": _host(), "pid": os.getpid(), "started": time.time(),
                       "heartbeat": time.time(), "command": command, "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._io = threading.Lock()  # a heartbeat write and the release never interleave
        self._released = False
        self._thread: threading.Thread | None = None

    def _create(self) -> bool:
        data = json.dumps(self.record).encode()
        if storage.is_remote(self.path):
            fs, p = _fs(self.path)
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

    def _remove_if(self, raw: bytes) -> None:
        """Deletes the record if it still is `raw` (the one judged dead): narrows the race of two waiters taking over
        at once (a conditional delete would close it; neither fsspec store offers one portably)."""
        now, _ = _read(self.path, with_mtime=False)
        if now == raw:
            if storage.is_remote(self.path):
                fs, p = _fs(self.path)
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(p)
            else:
                self.path.unlink(missing_ok=True)

    def acquire(self, wait_s: float | None = None) -> "WorkdirLock":
        deadline = time.monotonic() + (wait_budget() if wait_s is None else wait_s)
        for _ in range(5):
            raw, _ = _read(self.path, with_mtime=False)  # first: a store that ignores the precondition would overwrite
            if raw is None:
                if self._create():
                    break
                continue  # another process created it between our read and our create: look again
            holder = _parse(raw)
            if _is_ours(holder):
                self.record = holder  # this process already holds it (e.g. expand then train in one process)
                break
            dead = _wait_for_holder(self.path, self.workdir, max(0.0, deadline - time.monotonic()))
            if dead is None:
                continue  # released meanwhile
            holder = _parse(dead)
            why = "its process is gone" if _same_host(holder) else f"no heartbeat for {LEASE_S:.0f}s"
            log.warning("taking over the lock of %s: its holder (%s) is gone (%s)", self.workdir, _describe(holder),
                        why)
            self._remove_if(dead)
        else:
            raise WorkdirStillBusy(f"--workdir={self.workdir}: could not take {self.path} (other processes keep taking "
                                   "it); try again later")
        _SEEN.pop(str(self.path), None)
        _HELD[str(self.path)] = self
        self._thread = threading.Thread(target=self._beat, name="jaxgrow-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with self._io:
                    if self._stop.is_set():
                        return
                    holder = _holder(self.path)
                    if not holder or holder.get("token") != self.record["token"]:
                        log.warning("lost the lock of %s (it was taken over); stopping the heartbeat", self.workdir)
                        return
                    self.record["heartbeat"] = time.time()
                    storage.atomic_write_text(self.path, json.dumps(self.record))
            except Exception as e:  # noqa: BLE001  (a flaky store must not kill the run through its heartbeat)
                log.warning("lock heartbeat of %s failed (%s); retrying", self.workdir, type(e).__name__)

    def release(self, timeout: float = RELEASE_TIMEOUT_S) -> None:
        """Deletes the record if it is still ours. Idempotent; bounded by `timeout` on an object store; never raises
        (an unreachable store: the lease expires by itself)."""
        if self._released:
            return
        self._released = True
        self._stop.set()
        _HELD.pop(str(self.path), None)
        _SEEN.pop(str(self.path), None)
        t0 = time.monotonic()
        got = self._io.acquire(timeout=timeout)  # a heartbeat write in flight finishes first (else it re-creates it)
        try:
            left = max(1.0, timeout - (time.monotonic() - t0))
            raw, _ = _read(self.path, with_mtime=False, timeout=left)
            if raw is not None and _parse(raw).get("token") == self.record["token"]:
                if storage.is_remote(self.path):
                    fs, p = _fs(self.path)
                    with contextlib.suppress(FileNotFoundError):
                        _call(fs, "rm_file", p, timeout=max(1.0, timeout - (time.monotonic() - t0)))
                    fs.invalidate_cache(p)
                else:
                    self.path.unlink(missing_ok=True)
        except Exception as e:  # noqa: BLE001  (an unreachable store at exit: the lease expires by itself)
            log.warning("could not release the lock of %s (%s: %s); it expires %.0fs after its last heartbeat",
                        self.workdir, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", LEASE_S)
        finally:
            if got:
                self._io.release()


def acquire(workdir: Any, command: str = "", wait_s: float | None = None) -> WorkdirLock:
    """Takes the workdir's lock (after validation, before the first write); idempotent within a process."""
    held = _HELD.get(str(storage.join(workdir, LOCK_FILE)))
    return held if held is not None else WorkdirLock(workdir, command).acquire(wait_s)


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


def release_all() -> None:
    """Releases every lock this process holds: idempotent, quick (RELEASE_TIMEOUT_S at most per lock), never raises;
    safe at exit, from a signal handler, or right before os._exit."""
    for lk in list(_HELD.values()):
        with contextlib.suppress(Exception):
            lk.release()


# At exit: first when the interpreter starts shutting down, while its thread pools still take work (threading's exit
# hooks run in reverse order of registration, and concurrent.futures registered its own when imported above); then
# atexit, a no-op by then (kept for an interpreter without the private hook).
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(release_all)
atexit.register(release_all)
