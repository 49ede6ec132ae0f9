"""The one exception boundary of every entry point (the CLI and the experiment scripts): what goes wrong becomes
one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import errno
import sys
import traceback
from typing import Any, Callable

from jaxgrow.config import InputError, TryLater, UsageError  # noqa: F401  (UsageError: re-exported for the CLI)


EX_TEMPFAIL = 75  # sysexits.h: "try again later" (config.TryLater), which schedulers retry


def fail(message: str, code: int = 2) -> int:
    print(f"jaxgrow: error: {message}", file=sys.stderr)
    return code


# Causes of environment faults, as the OS (errno) or a storage/transport library names them.
_ERRNO_CAUSES = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOMEM: "out of memory",
                 errno.ECONNREFUSED: "connection refused", errno.ETIMEDOUT: "timed out",
                 errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH: "network unreachable"}
_MESSAGE_CAUSES = (("No space left on device", "disk full"), ("Disk quota exceeded", "disk quota exceeded"),
                   ("Read-only file system", "read-only file system"), ("RESOURCE_EXHAUSTED", "out of memory"),
                   ("Connection refused", "connection refused"), ("Cannot connect to host", "storage unreachable"),
                   ("Could not connect to the endpoint", "storage unreachable"), ("Name or service not known",
                   "storage unreachable"), ("Temporary failure in name resolution", "storage unreachable"),
                   ("timed out", "timed out"), ("Max retries exceeded", "storage unreachable"),
                   ("ServiceUnavailable", "storage unavailable"), ("503", "storage unavailable"),
                   ("Permission denied", "permission denied"), ("AccessDenied", "permission denied"),
                   ("403", "permission denied"), ("InvalidAccessKeyId", "bad credentials"),
                   ("credentials", "bad credentials"))
_TRANSPORT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google", "gcsfs", "s3fs",
                      "fsspec", "tensorstore")


def environment_cause(e: BaseException) -> str | None:
    """The environment fault behind an exception (its chain included): disk full, storage unreachable, permission,
    ... or None when it is not one (then it is a bug, and shown as such)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _ERRNO_CAUSES:
            return _ERRNO_CAUSES[e.errno]
        text = f"{type(e).__name__}: {e}"
        for needle, cause in _MESSAGE_CAUSES:
            if needle in text and (isinstance(e, OSError) or type(e).__module__.split(".")[0] in _TRANSPORT_MODULES
                                   or needle in ("No space left on device", "Read-only file system",
                                                 "RESOURCE_EXHAUSTED", "Disk quota exceeded")):
                return cause
        if isinstance(e, (ConnectionError, TimeoutError)):
            return "storage unreachable"
        if type(e).__module__.split(".")[0] in _TRANSPORT_MODULES and isinstance(e, Exception):
            return "storage error"
        e = e.__cause__ or e.__context__
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:1000]


def boundary(fn: Callable[[], int | None], verbosity: Callable[[], int] = lambda: -1) -> int:
    """The one exception boundary of every entry point (the CLI and the experiment scripts): bad input is one line
    and exit code 2; "try again later" (TryLater: a live job on another host holds the workdir) is one line and exit
    code 75; an environment fault (disk full, storage unreachable, permission, out of memory) is one line
    naming its cause and exit code 1, with the traceback only at --verbosity=1; Ctrl-C during setup is exit 130."""
    try:
        return fn() or 0
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    except InputError as e:  # bad input, a malformed command line included (UsageError)
        return fail(_first_line(e))
    except TryLater as e:  # nothing wrong, but not now (a live job on another host holds the workdir): EX_TEMPFAIL
        return fail(_first_line(e), code=EX_TEMPFAIL)
    except Exception as e:  # noqa: BLE001  (classified: an environment fault is one line; anything else is a bug)
        cause = environment_cause(e)
        if cause is None:
            raise
        if verbosity() >= 1:
            traceback.print_exc()
        root = e
        while (root.__cause__ or root.__context__) is not None and not isinstance(root, OSError):
            root = root.__cause__ or root.__context__
        _release_workdir_locks()  # now, not at exit: what it may warn about comes before the one error line
        return fail(f"{cause}: {type(root).__name__}: {_first_line(root)} (the last committed checkpoint is kept; "
                    "rerun the same command once that is fixed; --verbosity=1 shows the traceback)", code=1)


def _release_workdir_locks() -> None:
    lock = sys.modules.get("jaxgrow.family.lock")  # loaded only by commands that took a workdir's lock
    if lock is not None:
        lock.release_all()


def script_main(run_fn: Callable[[list[str]], Any]) -> Callable[[list[str]], None]:
    """An `absl.app.run` main for an experiment script: `run_fn(argv)` inside the CLI's exception boundary."""

    def main_fn(argv: list[str]) -> None:
        from jaxgrow.train import faults  # noqa: PLC0415

        faults.install()  # a signal ends the script with one line, as it ends the CLI (train/faults.py)
        faults.leave(boundary(lambda: faults.hard_exits(lambda: run_fn(argv))))

    return main_fn
