"""checkpoint.py: the meta record, corruption detection, and which restore errors quarantine a step."""

import errno
import json

import jax
import numpy as np
import pytest

from jaxgrow import storage
from jaxgrow.train import checkpoint


TREE = {"a": np.arange(4096, dtype=np.float32), "b": np.ones((64, 64), np.float32)}
OPT = {"m": np.zeros(3, np.float32)}


def meta(step: int, **kw) -> checkpoint.Meta:
    return checkpoint.Meta(stage=0, member="m", mode="progressive", model={"hidden_size": 8}, **kw)


def saved(directory, steps=(1, 2)) -> checkpoint.Checkpoints:
    ckpts = checkpoint.Checkpoints(directory, keep=3)
    for step in steps:
        ckpts.save(step, jax.tree.map(lambda x: x * step, TREE), OPT, meta(step, data_state={"next_index": step}))
    ckpts.wait()
    return ckpts


def abstract():
    return (jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), TREE),
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), OPT))


def test_meta_round_trips_through_a_checkpoint(tmp_path):
    ckpts = checkpoint.Checkpoints(tmp_path / "ck")
    m = meta(3, data_state={"next_index": 7}, nonfinite=2, expanded_from="/x/members/small")
    ckpts.save(3, TREE, OPT, m)
    stored = ckpts.read_meta(3)
    ckpts.close()
    assert checkpoint.Meta.from_json(stored) == m
    assert stored["step"] == 3 and "layout_version" in stored and set(stored["checksums"]) == {"params", "opt_state"}
    assert "imported_from" not in stored  # unset optional fields are not written
    assert stored["data_state"] == {"next_index": 7}


def test_truncated_checkpoint_is_detected_in_process(tmp_path, caplog):
    ckpts = saved(tmp_path / "ck")
    for f in (tmp_path / "ck" / "2" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="jaxgrow"):
        params, _, got = ckpts.restore_latest_good(*abstract())
    assert got["step"] == 1 and np.array_equal(np.asarray(params["a"]), TREE["a"])
    assert "is corrupt" in caplog.text and (tmp_path / "ck" / "corrupt" / "2").is_dir()
    ckpts.close()


@pytest.mark.parametrize("error", [
    MemoryError("host allocation failed"),
    OSError(errno.EIO, "Input/output error"),
    PermissionError(errno.EACCES, "Permission denied"),
    ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.0GiB"),
    ValueError("UNAVAILABLE: gs://bucket/ck/2: connection reset"),
], ids=["oom", "eio", "eacces", "xla-oom", "unavailable"])
def test_io_errors_and_oom_propagate_and_never_quarantine(tmp_path, error, monkeypatch):
    ckpts = saved(tmp_path / "ck")
    real_restore = ckpts._mgr.restore

    def failing_restore(step, args=None):
        if "params" in args.keys():  # the meta read succeeds; the array read fails
            raise error
        return real_restore(step, args=args)

    monkeypatch.setattr(ckpts._mgr, "restore", failing_restore)
    with pytest.raises(type(error)):
        ckpts.restore_latest_good(*abstract())
    assert not (tmp_path / "ck" / "corrupt").exists()
    assert ckpts.steps() == [1, 2]  # both steps stay where they are
    monkeypatch.undo()
    params, _, got = ckpts.restore_latest_good(*abstract())  # and still restore once the error is gone
    assert got["step"] == 2 and np.array_equal(np.asarray(params["a"]), 2 * TREE["a"])
    ckpts.close()


def test_damage_is_told_apart_from_environment_errors():
    assert checkpoint.is_damage(ValueError("DATA_LOSS: Error reading chunk: unexpected end of file"))
    assert checkpoint.is_damage(FileNotFoundError("params/_METADATA"))
    assert checkpoint.is_damage(KeyError("layers"))
    assert not checkpoint.is_damage(MemoryError())
    assert not checkpoint.is_damage(OSError(errno.ENOSPC, "No space left on device"))
    wrapped = ValueError("restore failed")
    wrapped.__cause__ = OSError(errno.EIO, "Input/output error")
    assert not checkpoint.is_damage(wrapped)


# ------------------------------------------------------------------------------------------------
# Remote directories (a real moto S3 server on 127.0.0.1): staged saves, commit markers, quarantine


def test_staged_s3_checkpoints_commit_keep_quarantine_and_ignore_uncommitted(s3_emulator, monkeypatch):
    # s3:// is staged locally and mirrored with a COMMITTED marker; gs:// is written by orbax itself with its own
    # commit file (tests/test_family_bucket.py covers the same properties there)
    import fsspec

    scheme = "s3"
    fs = fsspec.filesystem(scheme, skip_instance_cache=True)
    d = f"{scheme}://jaxgrow-test/ck"
    ckpts = checkpoint.Checkpoints(d, keep=2)
    for step in (1, 2, 3):
        ckpts.save(step, jax.tree.map(lambda x: x * step, TREE), OPT, meta(step, data_state={"next_index": step}))
    # keep=2 deleted only the oldest committed step; each step's marker lists exactly its objects
    assert ckpts.steps() == [2, 3] and not fs.exists("jaxgrow-test/ck/1")
    marker = json.loads(fs.cat("jaxgrow-test/ck/3/COMMITTED"))
    assert set(marker["files"]) | {"COMMITTED"} == set(storage.list_files(f"{d}/3"))
    assert all(fs.size(f"jaxgrow-test/ck/3/{rel}") == size for rel, size in marker["files"].items())
    assert ckpts.read_meta(3)["data_state"] == {"next_index": 3}
    # an upload killed before its marker (step 4: objects, no COMMITTED) is not a step
    for rel in storage.list_files(f"{d}/3"):
        if rel != "COMMITTED":
            fs.copy(f"jaxgrow-test/ck/3/{rel}", f"jaxgrow-test/ck/4/{rel}")
    assert ckpts.steps() == [2, 3] and checkpoint.has_checkpoint(d) and not checkpoint.has_checkpoint(f"{d}/x")
    # truncate an array object of step 3: the checksum/format check quarantines it remotely, 2 restores
    big = max((f for f in fs.find("jaxgrow-test/ck/3/params")), key=lambda f: fs.size(f))
    fs.pipe(big, fs.cat(big)[: fs.size(big) // 2])
    params, _, got = ckpts.restore_latest_good(*abstract())
    assert got["step"] == 2 and np.array_equal(np.asarray(params["a"]), TREE["a"] * 2)
    assert ckpts.steps() == [2] and fs.exists("jaxgrow-test/ck/corrupt/3/COMMITTED")
    assert not fs.exists("jaxgrow-test/ck/3")
    # a new save of the uncommitted step 4 replaces its leftovers and commits it
    ckpts.save(4, jax.tree.map(lambda x: x * 4, TREE), OPT, meta(4))
    assert ckpts.steps() == [2, 4]
    ckpts.close()
    again = checkpoint.Checkpoints(d, keep=2)  # a fresh process sees the same committed steps
    params, opt, got = again.restore(4, *abstract())
    assert got["step"] == 4 and np.array_equal(np.asarray(params["b"]), TREE["b"] * 4)
    # params only (eval, export, sample): the optimizer state's objects are not needed
    params, opt, _ = again.restore(4, abstract()[0], None)
    assert opt is None and np.array_equal(np.asarray(params["a"]), TREE["a"] * 4)
    # the store failing mid-download (network, credentials) is not damage: it propagates, nothing quarantined
    real_copy = storage.copy_file

    def flaky(src, dest):
        if "/params/" in str(src):
            raise ConnectionError("connection reset by peer")
        return real_copy(src, dest)

    monkeypatch.setattr(storage, "copy_file", flaky)
    with pytest.raises(ConnectionError):
        again.restore_latest_good(*abstract())
    monkeypatch.undo()
    assert again.steps() == [2, 4] and not fs.exists("jaxgrow-test/ck/corrupt/4")
    # a listed object that is gone is damage: that step is quarantined, the older one restores
    fs.rm(max(fs.find("jaxgrow-test/ck/4/params"), key=lambda f: fs.size(f)))
    _, _, got = again.restore_latest_good(*abstract())
    assert got["step"] == 2 and fs.exists("jaxgrow-test/ck/corrupt/4/COMMITTED") and again.steps() == [2]
    again.close()
