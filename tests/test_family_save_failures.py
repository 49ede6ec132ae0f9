"""A failed background checkpoint save (issue #31 case 15): 2 processes x 2 devices with asynchronous saves; process 0's
second save fails in the background (JAXGROW_FAULT=checkpoint_write_error:2, as a storage write error does). Both
processes stop at the next step boundary and exit 1 within seconds, each with one line naming the checkpoint path
(before: the healthy host waited in orbax's barriers for 20 minutes, the failed one for it, and SIGTERM went
unanswered); the rerun resumes from the last committed step and ends bitwise where an uninterrupted run ends."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import shutil

import pytest
from test_family_multihost import free_port
from test_family_reliability import assert_bitwise_equal, member_arrays
from test_family_signals import CUT

from conftest import REPO, XLA_CACHE, run_cli
from jaxgrow.train import checkpoint


pytestmark = pytest.mark.slow

# CUT (one member of 7 steps): a checkpoint (asynchronous) every 2 steps, the processes' flags combined at every log
# boundary (2 steps)
FLAGS = ("--config.log.every_steps=2", "--config.checkpoint.every_steps=2", "--config.checkpoint.async_save=True",
         "--config.log.eval_every_steps=1000")


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> tuple:
    config = tmp_path_factory.mktemp("save-failures") / "cut.py"
    config.write_text(CUT)
    return ("--config", str(config), *FLAGS)


@pytest.fixture(scope="module")
def template(tmp_path_factory, args):
    """A workdir of `args` with its data tokenized and cached, no checkpoint yet (killed after its first step)."""
    w = tmp_path_factory.mktemp("save-failures") / "template"
    proc = run_cli(*args, "--workdir", str(w), env={"JAXGROW_FAULT": "train_step:1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    (w / "lock.json").unlink()
    return w


def two_processes(args: tuple, workdir, fault: str | None = None, timeout: float = 300) -> list[tuple[int, str, float]]:
    """Runs `args` on 2 processes x 2 devices (the fault in process 0 only); (exit code, stderr, seconds) of each."""
    port = free_port()
    procs, t0 = [], time.monotonic()
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
                   JAX_COMPILATION_CACHE_DIR=XLA_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        env.pop("JAXGROW_FAULT", None)
        if fault and pid == 0:
            env["JAXGROW_FAULT"] = fault
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxgrow.main", *args, "--workdir", str(workdir)],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"still running after {timeout}s") from None
        out.append((p.returncode, err, time.monotonic() - t0))
    return out


def test_one_hosts_failed_async_save_stops_both_fast_and_the_rerun_resumes_bitwise(tmp_path, args, template):
    w, ref = tmp_path / "run", tmp_path / "ref"
    for d in (w, ref):
        shutil.copytree(template, d)
    (code0, err0, t0), (code1, err1, t1) = two_processes(args, w, fault="checkpoint_write_error:2")
    step_dir = w / "stages" / "0-cut" / "4"  # the second save: steps 2 and 4
    for code, err in ((code0, err0), (code1, err1)):
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("jaxgrow: error:")]
        assert code == 1, err[-3000:]
        assert "Traceback" not in err and len(errors) == 1 and errors[0] == lines[-1], err[-3000:]
        assert f"checkpoint {step_dir} failed on process 0" in lines[-1] and "rerun the same command" in lines[-1]
    assert "injected write error" in err0.strip().splitlines()[-1]  # the failed host names the cause
    assert abs(t1 - t0) < 60, (t0, t1)  # the healthy host did not wait for orbax's barriers (20 minutes)
    assert checkpoint.step_is_committed(w / "stages" / "0-cut", 2)
    assert not checkpoint.step_is_committed(w / "stages" / "0-cut", 4)

    resumed = two_processes(args, w)
    assert [c for c, _, _ in resumed] == [0, 0], resumed[0][1][-3000:]
    assert "stage 0 (cut): resumed at step 2/" in resumed[0][1], resumed[0][1][-3000:]
    reference = two_processes(args, ref)
    assert [c for c, _, _ in reference] == [0, 0], reference[0][1][-3000:]
    assert_bitwise_equal(member_arrays(w), member_arrays(ref))


_TENSORSTORE_ON_THE_EMULATOR = """
import tensorstore as ts
# an OCDBT database opened again re-reads its manifest, then updates it conditionally on the generation it read
spec = {"driver": "ocdbt", "base": "gs://jaxgrow-test/db/"}
for round in range(2):
    kv = ts.KvStore.open(spec).result()
    for i in range(3):
        kv.write(f"k{round}-{i}", b"x").result()
assert len(ts.KvStore.open(spec).result().list().result()) == 6
# compare-and-swap: a write conditional on a generation that is no longer current does not apply
kv = ts.KvStore.open("gs://jaxgrow-test/cas/").result()
first = kv.write("x", b"1").result().generation
kv.write("x", b"2").result()
kv.write("x", b"3", if_equal=first).result()
assert kv.read("x").result().value == b"2"
print("ok")
"""


def test_the_gcs_emulator_answers_generations_and_preconditions_as_gcs_does(gcs_emulator):
    """tests/gcs_emulator.py: what tensorstore (orbax's gs:// writer), gcsfs and the workdir lock depend on. On the
    plain gcp-storage-emulator the first part fails every time with "Error writing gs://jaxgrow-test/db/manifest.ocdbt:
    Malformed StorageGeneration" (its reads carry no x-goog-generation: generation 0), and the others "succeed"."""
    proc = subprocess.run([sys.executable, "-c", _TENSORSTORE_ON_THE_EMULATOR], check=False,
                          env={**os.environ, **gcs_emulator}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    import gcsfs

    fs = gcsfs.GCSFileSystem()
    fs.pipe_file("jaxgrow-test/lockish/lock.json", b"first", mode="create")  # ifGenerationMatch=0
    with pytest.raises(FileExistsError):  # 412: of two creators one wins, as on GCS
        fs.pipe_file("jaxgrow-test/lockish/lock.json", b"second", mode="create")
    assert fs.cat("jaxgrow-test/lockish/lock.json") == b"first"
