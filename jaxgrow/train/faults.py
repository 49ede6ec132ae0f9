"""Faults: injection for the reliability tests, the process's signal handling, and preemption (SignalFlag, Preempted).

Fault injection: die (or get SIGTERM / SIGINT, or a failed write) at a named point of a run.

    JAXGROW_FAULT="<point>:<n>[:TERM|:INT]"   the n-th time this process reaches <point>, send
                                              itself SIGKILL (default), SIGTERM or SIGINT (Ctrl-C).

Points: train_step (after a step's update), checkpoint_saving (a stage checkpoint write started,
async: not yet committed), member_saving (a member checkpoint write started), expanding (inside an
expansion, between the params and the optimizer state), tokenize_unit (a tokenize unit's shards written, its record
not yet: `tokenize` and the in-run tokenization of raw text), expand_saving (`expand` and `prune` wrote their lineage
record and config, not yet the derived checkpoint), export_writing (`export` wrote one member, not yet the next),
report_writing (the family's members are evaluated, report.json not yet written), pruning (inside a pruning: the
pipeline's prune stage and the `prune` command). One more is not a signal: checkpoint_write_error:<n> makes this
process's n-th asynchronous checkpoint save fail in the background, as a storage write error does
(checkpoint.Checkpoints; set it for one process of a multi-host run to fail only that host's save). Unset in normal
runs: then `point()` is an environment lookup and nothing else.

Signals. `install()` (the CLI calls it before anything else; SignalFlag calls it too) handles SIGINT and SIGTERM for
the whole process: outside the train loop's graceful window a signal ends the process at once, whatever it is doing
and whatever native threads (orbax, tensorstore, XLA, the tokenizers' Rust pool, grain) are running: it releases the
workdir locks, writes one line (`jaxgrow: error: interrupted by SIGINT ...` / `stopped by SIGTERM ...`) and leaves with
os._exit(128 + signum), without unwinding the main thread or finalizing the interpreter. Every write of jaxgrow is
atomic or resumable (`kill -9` anywhere is already safe), so skipping finalizers loses nothing.

Why not KeyboardInterrupt: Python raises it in whatever Python code the main thread runs next, which may be a gc
callback (jax's `_xla_gc_callback`) or an atexit hook, where it is printed as "Exception ignored" and dropped (the
interrupted command then finished and exited 0); an import of a native extension (exit 1 with an ImportError
traceback); or, after the exception boundary has already returned, the interpreter's shutdown (killed by SIGINT with
no message). And when it does reach the boundary, the main thread unwinds and the interpreter finalizes while the
threads of an orbax save (non-daemon Python threads waiting on tensorstore's native futures), XLA's and tensorstore's
thread pools and grain's workers are still running: they then meet a closed asyncio loop and a shut-down executor
("cannot schedule new futures after interpreter shutdown"), jax's atexit hook tears down the backends they use, and
C++ static destructors run under live native threads: the segmentation faults (exit 139) of `expand`, `evaluate
--suite` and `sample` on Ctrl-C (issue #31). The console script's normal end skips that shutdown too (`leave`).

How: the C-level handler Python installs writes the signal number to a wakeup pipe (signal.set_wakeup_fd) at once, and
a daemon thread reading it decides, so a signal acts even while the main thread is blocked in native code (an XLA
compilation, a collective, a checkpoint wait) where Python-level handlers never run. The Python-level handler decides
for what that thread has not read yet (each pipe byte is one signal, decided once), keeps the pipe in place, and parks
the main thread while the process exits.

The graceful window (SignalFlag.window(), opened by the stage loop around its steps): the first SIGTERM or SIGINT sets
the flag, and the loop saves a checkpoint at the next step boundary and exits 143 / 130 (its own messages). With
several processes SIGTERM is left to jax's preemption sync (every host saves at the same step): jax.distributed
installs a C handler for it, which install() keeps as the one it forwards SIGTERM to (Linux). A watchdog bounds the
graceful stop: when the loop has not reached a step boundary within JAXGROW_STOP_BOUNDARY_S seconds (default 60:
blocked in a collective with a dead or failed peer, or waiting on a hung save), or the process has not ended within
JAXGROW_STOP_EXIT_S seconds after that (default 300: the preemption checkpoint hangs), it writes one line and exits
143 / 130 (the last committed checkpoint is kept). A second SIGINT in the window exits at once. Outside the window
(setup, tokenization, an expansion, a member save, the report) there is no checkpoint to wait for: those signals end
the process at once, and the rerun redoes that part.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time


log = logging.getLogger("jaxgrow")


def point(name: str) -> None:
    """storage.fault_point, the one implementation (so the data wing can mark points too); imported when a fault is
    set, so that this module stays light enough to import (and install()) before anything else."""
    if os.environ.get("JAXGROW_FAULT"):
        from jaxgrow import storage  # noqa: PLC0415

        storage.fault_point(name)


def fault_count(name: str) -> int | None:
    """For a point that is not a signal (checkpoint_write_error): the n of JAXGROW_FAULT="<name>:<n>" when it names
    this point, else None."""
    spec = os.environ.get("JAXGROW_FAULT", "")
    parts = spec.split(":")
    return int(parts[1]) if parts[0] == name and len(parts) > 1 else None


# ----------------------------------------------------------------------------------------------
# Leaving now: for a signal, a watchdog, or an error after which this process's background work may never finish.


class HardExit(Exception):
    """An error after which background work of this process may never finish (a failed checkpoint save whose threads
    wait in a barrier for the other hosts): the CLI writes its one line and leaves with os._exit(code) instead of
    unwinding and joining those threads."""

    code = 1


_state_lock = threading.RLock()   # the signal decisions and the start of an exit
_exiting = threading.Event()      # set (under _state_lock) by whoever ends the process
_line_written = threading.Event()


def _signal_line(signum: int, detail: str = "") -> str:
    name = signal.Signals(signum).name
    what = "interrupted by" if signum == signal.SIGINT else "stopped by"
    return (f"jaxgrow: error: {what} {name}{detail} (every write is atomic or resumable: rerun the same command to "
            "continue)")


def _write_line(line: str) -> None:
    """Straight to file descriptor 2: no buffered-stream lock that the interrupted main thread may hold."""
    if _line_written.is_set():
        return
    _line_written.set()
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode("utf-8", "replace"))


def _flush_stdout() -> None:
    """Buffered output (a command's printed results) goes out first; bounded, since the main thread may hold the
    stream's lock."""

    def flush() -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()

    t = threading.Thread(target=flush, daemon=True)
    t.start()
    t.join(1.0)


def _stop_children() -> None:
    """This process's multiprocessing children (tokenize workers, grain workers) end with it, not after it."""
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return
    with contextlib.suppress(Exception):
        for child in mp.active_children():
            with contextlib.suppress(Exception):
                child.kill()


def _release_workdir_locks() -> None:
    lock = sys.modules.get("jaxgrow.family.lock")  # loaded only by commands that took a workdir's lock
    if lock is not None:
        with contextlib.suppress(Exception):
            lock.release_all()


def _claim_exit() -> bool:
    """True for the first caller (it ends the process); False when an exit is already under way."""
    with _state_lock:
        if _exiting.is_set():
            return False
        _exiting.set()
        return True


def _finish_exit(code: int, line: str) -> None:
    _stop_children()
    _release_workdir_locks()  # its warnings come before the one line
    _write_line(line)
    _flush_stdout()
    os._exit(code)


def exit_now(code: int, line: str) -> None:
    """Ends the process: children stopped, workdir locks released, `line` written, stdout flushed (bounded),
    os._exit(code). Never returns. When an exit is already under way (a second signal while the locks are being
    released), leaves at once with this code."""
    if not _claim_exit():
        _write_line(line)
        os._exit(code)
    _finish_exit(code, line)


def leave(code: int) -> None:
    """The console script's end: what the interpreter's shutdown would do that matters (workdir locks released,
    jax.distributed shut down, logging and stdout flushed), then os._exit(code). Skipping the rest of the shutdown
    closes its window in which a signal finds Python's handlers already reset (killed by SIGINT, no line) and native
    threads still running (a segmentation fault); nothing of jaxgrow's is left to finalize by then."""
    if not _claim_exit():  # a signal's exit is under way: it ends the process with its own line and code
        time.sleep(30)
        os._exit(code)
    _release_workdir_locks()
    if "jax" in sys.modules:  # what jax's own exit hook does (a no-op when jax.distributed was not started)
        with contextlib.suppress(Exception):
            sys.modules["jax"].distributed.shutdown()
    for flush in (logging.shutdown, sys.stdout.flush, sys.stderr.flush):  # all of it: a normal end waits for them
        with contextlib.suppress(Exception):
            flush()
    os._exit(code)


def hard_exits(fn):
    """fn(), except that a HardExit ends the process at once with its one line (see HardExit)."""
    try:
        return fn()
    except HardExit as e:
        exit_now(e.code, f"jaxgrow: error: {e}")


# ----------------------------------------------------------------------------------------------
# The process's signal handling


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_installed_pid: int | None = None
_pipe: tuple[int, int] | None = None   # the wakeup pipe (read end non-blocking; the C handler writes the write end)
_previous: dict = {}                   # what install() replaced, for uninstall()
_flag: "SignalFlag | None" = None      # the open graceful window
_foreign: dict = {}                    # signum -> (callable, struct sigaction) of a C handler install() displaced


class _SigAction(ctypes.Structure):  # glibc's struct sigaction (x86_64 and aarch64)
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


_SA_SIGINFO = 4


def _sigaction(signum: int, new: _SigAction | None = None) -> _SigAction | None:
    """The C-level disposition of `signum` (and sets `new` when given), on Linux; None elsewhere or on failure."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        old = _SigAction()
        if libc.sigaction(signum, ctypes.byref(new) if new is not None else None, ctypes.byref(old)) != 0:
            return None
        return old
    except (OSError, AttributeError):
        return None


def _keep_foreign(signum: int) -> bool:
    """Before Python's handler replaces a C handler that another library installed (jax.distributed's SIGTERM
    notifier, which feeds its preemption sync), keep it to forward the signal to. False: leave that handler alone
    (a three-argument one, which we would call wrongly)."""
    python_handler = _sigaction(signal.SIGINT)  # ours is installed for SIGINT by now: Python's C-level handler
    current = _sigaction(signum)
    if python_handler is None or current is None:
        return True
    address = int(current.handler or 0)
    if address in (0, 1, int(python_handler.handler or 0)):  # SIG_DFL, SIG_IGN, or Python's own
        return True
    if current.flags & _SA_SIGINFO:
        return False
    _foreign[signum] = (ctypes.CFUNCTYPE(None, ctypes.c_int)(address), current)
    return True


def _forward_foreign(signum: int) -> bool:
    kept = _foreign.get(signum)
    if kept is None:
        return False
    kept[0](signum)
    return True


def installed() -> bool:
    return _installed_pid == os.getpid()


def install() -> bool:
    """Handles SIGINT and SIGTERM for the whole process (see the module doc). Idempotent; from the main thread only
    (elsewhere it does nothing). Called again after jax.distributed.initialize (SignalFlag does), it takes SIGTERM back
    from jax's C handler and forwards to it. Returns True when this call installed the handling."""
    global _installed_pid, _pipe
    if threading.current_thread() is not threading.main_thread():
        return False
    with _state_lock:
        fresh = not installed()
        if fresh:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            _pipe = (r, w)
            _previous.clear()
            _previous.update({sig: signal.getsignal(sig) for sig in _SIGNALS})
            _installed_pid = os.getpid()
            threading.Thread(target=_watch, args=(r,), name="jaxgrow-signals", daemon=True).start()
        signal.signal(signal.SIGINT, _on_signal)
        if _keep_foreign(signal.SIGTERM):
            signal.signal(signal.SIGTERM, _on_signal)
        previous_fd = signal.set_wakeup_fd(_pipe[1], warn_on_full_buffer=False)
        if fresh:
            _previous["wakeup_fd"] = previous_fd
        return fresh


def uninstall() -> None:
    """Puts back what install() replaced (in-process callers of the CLI's main(); SignalFlag outside the CLI)."""
    global _installed_pid
    if threading.current_thread() is not threading.main_thread() or not installed():
        return
    with _state_lock:
        for sig in _SIGNALS:
            previous = _previous.get(sig)
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            if sig in _foreign:  # the C handler we took it from (jax's preemption notifier)
                _sigaction(sig, _foreign.pop(sig)[1])
        signal.set_wakeup_fd(_previous.get("wakeup_fd", -1))
        _installed_pid = None  # the signal thread stays, idle, on its pipe


def _after_fork_in_child() -> None:
    """A forked child (grain or multiprocessing 'fork' workers) has no signal thread: default handling there."""
    global _installed_pid
    if _installed_pid is None:
        return
    _installed_pid = None
    with contextlib.suppress(Exception):
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _decide(signum: int) -> tuple:
    """Under _state_lock: (exit, signum, message, flag to arm) for one signal. exit: None (the graceful window took
    it), "thread" (end the process from a fresh thread) or "now" (an exit is already under way: leave at once). No
    thread is started under the lock (Thread.start takes threading's own lock, which the interrupted main thread may
    hold while it waits for ours)."""
    flag = _flag
    if flag is not None:
        handled, message, arm = flag.receive(signum)
        if handled:
            return None, signum, message, flag if arm else None
    if not _claim_exit():
        return "now", signum, None, None
    return "thread", signum, None, None


def _drain(read_fd: int) -> list:
    """Under _state_lock: the decisions for every signal number waiting in the pipe (each byte is one signal, read
    by exactly one of the signal thread and the Python-level handler)."""
    actions = []
    while True:
        try:
            data = os.read(read_fd, 64)
        except InterruptedError:
            continue
        except OSError:  # BlockingIOError: nothing waiting
            return actions
        if not data:
            return actions
        actions += [_decide(s) for s in data if s in _SIGNALS]


def _act(actions: list) -> None:
    """Outside _state_lock (logging takes its own locks, which the interrupted main thread may hold)."""
    for exit_kind, signum, message, arm in actions:
        if arm is not None:
            arm._arm(signum)
        if message:
            log.warning("%s", message)
        line = _signal_line(signum)
        if exit_kind == "now":
            _write_line(line)
            os._exit(128 + signum)
        if exit_kind == "thread":  # the signal thread stays free to take a second signal (then: leave at once)
            threading.Thread(target=_finish_exit, args=(128 + signum, line), name="jaxgrow-exit", daemon=True).start()


def _watch(read_fd: int) -> None:
    """The signal thread: acts on a signal at once, even while the main thread is blocked in native code."""
    import select  # noqa: PLC0415

    while installed():
        try:
            select.select([read_fd], [], [])
        except InterruptedError:
            continue
        except (OSError, ValueError):
            return
        with _state_lock:
            actions = _drain(read_fd) if installed() else []
        _act(actions)


def _on_signal(signum, frame) -> None:
    """Python-level handler (main thread, whenever it next runs Python code). The signal thread decides and acts; this
    one keeps our wakeup pipe in place, waits until that thread has decided for what is in the pipe (so the main
    thread never runs on to finish the command, or into the interpreter's shutdown, before an exit has begun), and
    then parks the main thread while the process exits. It starts no thread and logs nothing: the code it
    interrupted may hold threading's or a stream's lock."""
    if not installed():  # a forked child that inherited the handler
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os._exit(128 + signum)
    import select  # noqa: PLC0415

    read_fd, write_fd = _pipe
    if signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False) != write_fd:
        with contextlib.suppress(OSError):  # our pipe had been replaced: this signal never reached it
            os.write(write_fd, bytes([signum]))
    deadline = time.monotonic() + 2.0
    while select.select([read_fd], [], [], 0)[0] and time.monotonic() < deadline:
        time.sleep(0.002)
    with _state_lock:  # the signal thread reads and decides under it: its decisions are complete now
        actions = _drain(read_fd)  # (nothing, unless that thread is gone)
    if actions:
        _act(actions)
    if _exiting.is_set():
        time.sleep(30)  # the exiting thread ends the process long before this returns
        os._exit(128 + signum)


def _watchdog_exit(signum: int, detail: str) -> None:
    if _claim_exit():
        _finish_exit(128 + signum, _signal_line(signum, detail))


# ----------------------------------------------------------------------------------------------
# Preemption: SIGTERM / Ctrl-C become a checkpoint at the next step boundary, then a clean exit.


class Preempted(Exception):
    """Raised after a preemption checkpoint has been written; the run exits cleanly."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class SignalFlag:
    """SIGTERM/SIGINT set a flag that the loop checks at each step boundary (no host sync), while the stage loop holds
    the window open (`window()`); elsewhere they end the process at once (see the module doc).

    A second SIGINT exits at once. With several processes SIGTERM is left to jax's preemption sync service (run_stage
    asks orbax's `reached_preemption`), so that every host saves at the same step; the watchdog applies to it too.
    """

    def __init__(self):
        self.signum: int | None = None
        self.multi_host = False
        self._installed_here = False
        self._open = 0
        self._term_seen = False
        self._boundary = threading.Event()
        self._watchdog: threading.Thread | None = None

    def __enter__(self):
        import jax  # noqa: PLC0415

        self.multi_host = jax.process_count() > 1
        if threading.current_thread() is threading.main_thread():
            was = installed()
            install()  # again after jax.distributed.initialize: SIGTERM forwarded to its preemption notifier
            self._installed_here = not was
        return self

    def __exit__(self, *exc):
        if self._installed_here:
            uninstall()

    @contextlib.contextmanager
    def window(self):
        """The graceful window: the stage loop's steps (signals elsewhere end the process at once)."""
        global _flag
        with _state_lock:
            outer, _flag = _flag, self
            self._open += 1
        try:
            yield self
        finally:
            with _state_lock:
                self._open -= 1
                _flag = outer
            if self._watchdog is not None:
                self._boundary.set()  # the loop is over: what remains is bounded by the exit deadline

    def stopping(self) -> None:
        """The loop reached the boundary it stops at (the preemption checkpoint comes next)."""
        self._boundary.set()

    def receive(self, signum: int) -> tuple[bool, str | None, bool]:
        """Under the signal lock, for a signal during the window: (handled gracefully, a line to log, whether to arm
        the watchdog). Not handled: the process ends now (outside the window; a second SIGINT)."""
        if not self._open:
            return False, None, False
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM and self.multi_host:
            if self._term_seen:
                return True, None, False
            self._term_seen = True
            if _forward_foreign(signum):
                return True, "received SIGTERM: the hosts agree on a step to save at (jax's preemption sync)", True
        elif signum == signal.SIGTERM and self.signum is not None:
            return True, None, False  # a repeated SIGTERM changes nothing: the watchdog bounds the stop
        elif self.signum is not None:
            return False, None, False  # a second SIGINT: now
        self.signum = signum
        return True, f"received {name}: saving a checkpoint at the next step boundary", True

    def _arm(self, signum: int) -> None:
        with _state_lock:
            if self._watchdog is not None:
                return
            self._watchdog = threading.Thread(target=self._watch, args=(signum,), name="jaxgrow-stop-watchdog",
                                              daemon=True)
        self._watchdog.start()

    def _watch(self, signum: int) -> None:
        boundary_s = _seconds("JAXGROW_STOP_BOUNDARY_S", 60.0)
        exit_s = _seconds("JAXGROW_STOP_EXIT_S", 300.0)
        if not self._boundary.wait(boundary_s):
            _watchdog_exit(signum, f": no step boundary within {boundary_s:.0f}s (blocked in a collective or a "
                                   "checkpoint save); exiting without a preemption checkpoint, the last committed one "
                                   "is kept")
            return
        time.sleep(exit_s)
        _watchdog_exit(signum, f": still running {exit_s:.0f}s after the step boundary it stopped at (a checkpoint "
                               "save that hangs?); the last committed checkpoint is kept")
