"""The workdir writer lock across hosts (issue #31 case 13, a preempted pod coming back to its bucket workdir): a lock
whose holder was hard-killed is taken over within about a minute by a job on another host, which waits (one line)
instead of failing; a holder that stays alive makes it give up with exit 75 (try again later), not 2; SIGTERM releases
the lock on gs://. Processes pose as another host through JAXGROW_HOSTNAME (lock.py's testing hook)."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, TINY_FAMILY_ARGS, run_cli
from jaxgrow.family import boundary, lock


# A holder: takes the lock of argv[1] and keeps it (heartbeating) until SIGTERM. `flag`: like the train command, the
# signal sets a flag and the program returns 143 through the normal exit; `os_exit`: the handler releases the locks
# and calls os._exit(143). `idle` (optional argv[3]): no heartbeat, so the store connection goes idle for longer than
# aiohttp keeps it (15 s) and its DNS cache lasts (10 s), as with a long run between checkpoints.
HOLDER = """
import logging, os, signal, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
from jaxgrow.family import lock
if sys.argv[3:] == ["idle"]:
    lock.HEARTBEAT_S = 1e6
stop = []
if sys.argv[2] == "os_exit":
    signal.signal(signal.SIGTERM, lambda *a: (lock.release_all(), os._exit(143)))
else:
    signal.signal(signal.SIGTERM, lambda *a: stop.append(a[0]))
lock.acquire(sys.argv[1], "holder")
print("held", flush=True)
while not stop:
    time.sleep(0.05)
sys.exit(143)
"""

# A job on another host: check_free (validation), then acquire, inside the CLI's exception boundary.
WAITER = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
from jaxgrow.family import boundary, lock
def main():
    t0 = time.monotonic()
    lock.check_free(sys.argv[1])
    lk = lock.acquire(sys.argv[1], "waiter")
    print(f"acquired after {time.monotonic() - t0:.1f}s", flush=True)
    lk.release()
sys.exit(boundary.boundary(main))
"""

OTHER_HOST = {"JAXGROW_HOSTNAME": "another-host"}


def _start(code: str, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_held(proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the holder exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if select.select([proc.stdout], [], [], 0.2)[0]:
            assert proc.stdout.readline().strip() == "held"
            return
    raise AssertionError("the holder did not take the lock")


def _gcs_exists(key: str) -> bool:
    import gcsfs

    fs = gcsfs.GCSFileSystem()
    fs.invalidate_cache()
    return fs.exists(key)


def _gcs_record(key: str) -> dict:
    import gcsfs

    fs = gcsfs.GCSFileSystem()
    fs.invalidate_cache()
    return json.loads(fs.cat_file(key))


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


# ------------------------------------------------------------------------------------------------ in process


def _record(path, host: str, pid: int = 4242) -> bytes:
    raw = json.dumps({"host": host, "pid": pid, "started": 0, "heartbeat": time.time(), "token": os.urandom(4).hex()})
    path.write_text(raw)
    return raw.encode()


def test_the_lease_rules_on_a_local_workdir(tmp_path, monkeypatch, caplog):
    """Decisions without a store: a long-silent record of another host is taken over at once (its mtime), a fresh one
    after LEASE_S without a change (our own clock), a heartbeating one makes the waiter give up with TryLater (exit
    75), a live one on this host is refused at once (exit 2); release is idempotent."""
    monkeypatch.setenv("JAXGROW_HOSTNAME", "here")
    monkeypatch.setattr(lock, "LEASE_S", 1.0)
    monkeypatch.setattr(lock, "POLL_S", 0.1)
    path = tmp_path / "lock.json"
    caplog.set_level(logging.INFO, "jaxgrow")
    # dead long ago on another host: the store's mtime says so, no wait
    _record(path, "elsewhere")
    old = time.time() - lock.LEASE_S - lock.CLOCK_SKEW_S - 5
    os.utime(path, (old, old))
    lk = lock.acquire(tmp_path, "t", wait_s=30)
    assert "taking over the lock" in caplog.text and "waiting" not in caplog.text
    lk.release()
    lk.release()  # idempotent
    lock.release_all()
    assert not path.exists()
    # fresh but silent: taken over once it has not changed for LEASE_S
    caplog.clear()
    _record(path, "elsewhere")
    t0 = time.monotonic()
    lock.check_free(tmp_path, wait_s=30)
    lk = lock.acquire(tmp_path, "t", wait_s=30)  # check_free's observation carries over: no second wait
    assert lock.LEASE_S <= time.monotonic() - t0 < lock.LEASE_S + 5
    assert "waiting up to 30s" in caplog.text and "taking over the lock" in caplog.text
    lk.release()
    # heartbeating on another host: the waiter gives up, "try again later"
    stop = threading.Event()

    def beat():
        while not stop.wait(0.2):
            _record(path, "elsewhere")

    _record(path, "elsewhere")
    beater = threading.Thread(target=beat)
    beater.start()
    try:
        with pytest.raises(lock.WorkdirStillBusy) as e:
            lock.acquire(tmp_path, "t", wait_s=2)
        assert not isinstance(e.value, lock.InputError)
        assert boundary.boundary(lambda: lock.check_free(tmp_path, wait_s=0)) == 75
    finally:
        stop.set()
        beater.join()
    # a live process on this host: refused at once, bad input (exit 2)
    _record(path, "here", pid=os.getppid())
    caplog.clear()
    with pytest.raises(lock.WorkdirBusy):
        lock.check_free(tmp_path, wait_s=30)
    assert "waiting" not in caplog.text
    assert boundary.boundary(lambda: lock.check_free(tmp_path)) == 2


def test_the_wait_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(lock.WAIT_ENV, raising=False)
    assert lock.wait_budget() == lock.LEASE_S + 60
    monkeypatch.setenv(lock.WAIT_ENV, "7")
    assert lock.wait_budget() == 7
    monkeypatch.setenv(lock.WAIT_ENV, "soon")
    with pytest.raises(lock.InputError, match="JAXGROW_LOCK_WAIT_S"):
        lock.wait_budget()


# ------------------------------------------------------------------------------------------------ GCS emulator


@pytest.mark.slow
def test_a_killed_holders_lock_is_taken_over_from_another_host_within_a_minute(gcs_emulator):
    w = "gs://jaxgrow-test/preempted"
    a = _start(HOLDER, w, "flag", env=gcs_emulator)
    try:
        _wait_held(a)
        a.send_signal(signal.SIGKILL)  # spot reclaim: nothing released
        a.wait()
        assert _gcs_exists("jaxgrow-test/preempted/lock.json")
        t0 = time.monotonic()
        b = subprocess.run([sys.executable, "-c", WAITER, w], check=False, cwd=REPO, env={**os.environ, **gcs_emulator,
                           **OTHER_HOST}, capture_output=True, text=True, timeout=lock.LEASE_S + 60)
        wall = time.monotonic() - t0
    finally:
        _stop(a)
    assert b.returncode == 0, b.stderr[-2000:]
    assert lock.LEASE_S <= wall < lock.LEASE_S + 20, wall
    lines = b.stderr.strip().splitlines()
    assert any(f"is held by pid {a.pid} on host {socket.gethostname()}" in line and "waiting up to" in line
               for line in lines), b.stderr
    assert any(f"taking over the lock of {w}" in line and f"pid {a.pid}" in line for line in lines), b.stderr
    assert "acquired after" in b.stdout
    assert not _gcs_exists("jaxgrow-test/preempted/lock.json")  # released at its end


def test_a_live_holder_on_another_host_is_waited_for_then_exit_75(gcs_emulator):
    """The real CLI on a gs:// workdir held by a live, heartbeating process elsewhere: one waiting line, then one
    error line and exit 75 (not 2); the holder's lock is untouched."""
    w = "gs://jaxgrow-test/busy"
    a = _start(HOLDER, w, "flag", env=gcs_emulator)
    try:
        _wait_held(a)
        token = _gcs_record("jaxgrow-test/busy/lock.json")["token"]
        t0 = time.monotonic()
        b = run_cli(*TINY_FAMILY_ARGS, "--workdir", w, env={**gcs_emulator, **OTHER_HOST, lock.WAIT_ENV: "12"},
                    timeout=120)
        wall = time.monotonic() - t0
        assert a.poll() is None
        assert _gcs_record("jaxgrow-test/busy/lock.json")["token"] == token
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGTERM)
            a.wait(timeout=30)
        _stop(a)
    assert b.returncode == 75, b.stderr[-3000:]
    assert 12 <= wall < 60, wall
    lines = [line for line in b.stderr.strip().splitlines() if "--workdir=" in line]
    assert len(lines) == 2, b.stderr  # the waiting line, then the one error line
    assert f"is held by pid {a.pid}" in lines[0] and "waiting up to 12s" in lines[0]
    last = b.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxgrow: error: ") and f"is still in use by pid {a.pid}" in last and "try again later" \
        in last, last
    assert a.returncode == 143
    assert not _gcs_exists("jaxgrow-test/busy/lock.json")  # SIGTERM released it (through the normal exit)


@pytest.mark.slow
def test_sigterm_releases_the_lock_on_gcs_and_s3(gcs_emulator, s3_emulator):
    """The two exits after SIGTERM (a flag and a normal return 143, as the train command does; release_all then
    os._exit from the handler), after the holder's store connection went idle: the lock object is gone. Before the fix
    the first logged "could not release the lock ... (RuntimeError)" on gs:// ("(HTTPClientError)" on s3://) and left
    it for a whole lease: it was released in atexit, after the interpreter had shut down the thread pool that aiohttp
    resolves host names through (hence `localhost` here: an IP address needs no lookup)."""
    import s3fs

    env = {**gcs_emulator, **s3_emulator}
    for key in ("STORAGE_EMULATOR_HOST", "AWS_ENDPOINT_URL"):
        env[key] = env[key].replace("127.0.0.1", "localhost")
    workdirs = {(store, mode): f"{store}://jaxgrow-test/term-{mode}" for store in ("gs", "s3")
                for mode in ("flag", "os_exit")}
    holders = {k: _start(HOLDER, w, k[1], "idle", env=env) for k, w in workdirs.items()}
    s3 = s3fs.S3FileSystem()

    def exists(key) -> bool:
        s3.invalidate_cache()
        return _gcs_exists(key[1]) if key[0] == "gs" else s3.exists(key[1])

    objects = {k: (k[0], w.split("://")[1] + "/lock.json") for k, w in workdirs.items()}
    try:
        for p in holders.values():
            _wait_held(p)
        assert all(exists(o) for o in objects.values())
        time.sleep(17)  # past aiohttp's keep-alive (15 s) and DNS cache (10 s): the release needs a new connection
        for p in holders.values():
            p.send_signal(signal.SIGTERM)
        for p in holders.values():
            p.wait(timeout=60)
    finally:
        _stop(*holders.values())
    for k, p in holders.items():
        err = p.stderr.read()
        assert p.returncode == 143, (k, err[-2000:])
        assert "could not release" not in err, (k, err[-2000:])
        assert not exists(objects[k]), k
