"""The kill-anywhere fault matrix beyond the train loop (tests/test_family_reliability.py covers train steps, stage
and member saves, the expansion): SIGKILL at every named point of `tokenize`, the in-run tokenization of raw text,
`expand`, `export` and the report, then the same command, compared bitwise with an uninterrupted run. And the
never-silently-wrong cases: a resumed tokenize with another tokenizer, a damaged or incomplete member checkpoint,
a torn metrics record, leaked scratch directories, a second writer on a live workdir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_family_reliability import assert_bitwise_equal, member_arrays

from conftest import REPO, TINY_FAMILY_ARGS, _cli_env, run_cli, run_cli_many
from data_common import make_docs, write_formats
from jaxgrow.data import store as store_lib, tokenizers as tokenizers_lib


pytestmark = pytest.mark.slow

KILLED = -signal.SIGKILL


def files_of(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part in skip for part in p.relative_to(root).parts)}


def inputs(tmp_path: Path, n: int = 3) -> list[Path]:
    out = []
    for i in range(n):
        out.append(write_formats(tmp_path / f"in{i}", make_docs(80 + 10 * i, seed=i))[".jsonl"])
    return out


# ------------------------------------------------------------------------------------------------ tokenize


def test_kill_tokenize_between_units_then_rerun_is_bytewise(tmp_path, bpe):
    files = inputs(tmp_path)
    tok = tmp_path / "tok.json"
    tok.write_text(bpe.tokenizer.to_str())
    glob = ",".join(str(f) for f in files)
    run_cli("tokenize", "--inputs", glob, "--out", str(tmp_path / "ref"), "--tokenizer", str(tok), check=True)
    for n in (1, 2, 3):  # after the 1st, 2nd, 3rd unit's shards, before its record
        out = tmp_path / f"killed{n}"
        proc = run_cli("tokenize", "--inputs", glob, "--out", str(out), "--tokenizer", str(tok),
                       env={"JAXGROW_FAULT": f"tokenize_unit:{n}"})
        assert proc.returncode == KILLED and not (out / "manifest.json").exists()
        run_cli("tokenize", "--inputs", glob, "--out", str(out), "--tokenizer", str(tok), check=True)
        assert files_of(out) == files_of(tmp_path / "ref"), n


def test_resumed_tokenize_with_another_tokenizer_redoes_the_units(tmp_path):
    """Case 1: a unit record pins the tokenizer (and dtype, EOS/BOS, text field, shard size)."""
    files = inputs(tmp_path)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    big = tokenizers_lib.train_bpe(make_docs(400, seed=3), 1800)  # ids up to 1799
    small = tokenizers_lib.train_bpe(make_docs(400, seed=4), 512)
    a.write_text(big.to_str())
    b.write_text(small.to_str())
    glob = ",".join(str(f) for f in files)
    out = tmp_path / "T"
    proc = run_cli("tokenize", "--inputs", glob, "--out", str(out), "--tokenizer", str(a),
                   env={"JAXGROW_FAULT": "tokenize_unit:2"})
    assert proc.returncode == KILLED and (out / "units" / "00000.json").exists()
    run_cli("tokenize", "--inputs", glob, "--out", str(out), "--tokenizer", str(b), check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    store = store_lib.TokenStore([(out, manifest)])
    assert int(store[0:len(store)].max()) < 512  # no id of the first tokenizer survived
    run_cli("tokenize", "--inputs", glob, "--out", str(tmp_path / "ref"), "--tokenizer", str(b), check=True)
    assert files_of(out, ("units",)) == files_of(tmp_path / "ref", ("units",))


# ------------------------------------------------------------------------------------------------ in-run tokenization

RAW_FAMILY = ("--config", "configs/family_micro.py", "--config.log.progress=False", "--config.model.vocab_size=512",
              "--config.data.seq_len=32", "--config.data.batch_size=4")


def test_kill_in_run_tokenization_then_rerun_is_bitwise_and_leaves_no_scratch(tmp_path):
    files = inputs(tmp_path, 4)
    data = (f"--config.data.train_files={','.join(str(f) for f in files[:3])}", f"--config.data.eval_files={files[3]}")
    env_tmp, ref_tmp = tmp_path / "tmp", tmp_path / "ref_tmp"  # each run's own scratch space
    env_tmp.mkdir()
    ref_tmp.mkdir()
    env = {"TMPDIR": str(env_tmp)}
    killed = tmp_path / "killed"
    # the uninterrupted reference beside the run to kill, one process per core
    ref, proc = run_cli_many([(*RAW_FAMILY, *data, "--workdir", str(w)) for w in (tmp_path / "ref", killed)],
                             parallel=2, envs=[{"TMPDIR": str(ref_tmp)}, {**env, "JAXGROW_FAULT": "tokenize_unit:2"}])
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert not list(ref_tmp.glob("jaxgrow-*")), list(ref_tmp.iterdir())
    assert proc.returncode == KILLED
    assert not killed.exists()  # the workdir is written only after every input is validated
    assert list(env_tmp.glob("jaxgrow-tokens-*"))  # the killed run's scratch, which the rerun adopts
    run_cli(*RAW_FAMILY, *data, "--workdir", str(killed), env=env, check=True)
    assert_bitwise_equal(member_arrays(killed), member_arrays(tmp_path / "ref"))
    assert files_of(killed / "data") == files_of(tmp_path / "ref" / "data")
    assert not list(env_tmp.glob("jaxgrow-*")), list(env_tmp.iterdir())  # no leaked scratch of any kind


# ------------------------------------------------------------------------------------------------ expand


def _grown_config(tmp_path: Path) -> str:
    cfg = tmp_path / "grown.py"
    cfg.write_text("from configs.family_tiny import get_config as base\n\n"
                   "def get_config():\n    c = base()\n    del c.members['small']\n"
                   "    c.members.medium.position, c.members.large.position = 0, 1\n"
                   "    c.budget_scale = 0.15\n    c.log.progress = False\n    return c\n")
    return str(cfg)


def test_kill_expand_then_the_same_command_finishes_it(tiny_family, tmp_path):
    """Case 2: a killed expand is finished by rerunning it; `train` refuses the half-expanded workdir."""
    cfg = _grown_config(tmp_path)
    src = str(tiny_family / "members" / "small")
    run_cli("expand", "--config", cfg, "--from", src, "--workdir", str(tmp_path / "ref"), check=True)
    killed = tmp_path / "killed"
    proc = run_cli("expand", "--config", cfg, "--from", src, "--workdir", str(killed),
                   env={"JAXGROW_FAULT": "expand_saving:1"})
    assert proc.returncode == KILLED and (killed / "config.json").exists()
    proc = run_cli("--config", cfg, "--workdir", str(killed))
    assert proc.returncode == 2 and "interrupted expand" in proc.stderr.strip().splitlines()[-1]
    assert "jaxgrow expand" in proc.stderr.strip().splitlines()[-1]  # the command that finishes it
    proc = run_cli("expand", "--config", cfg, "--from", src, "--workdir", str(killed), check=True)
    assert f"--config {cfg}" in proc.stdout  # the whole command to continue with
    lineage = json.loads((killed / "lineage.json").read_text())
    assert lineage["complete"] and lineage["parent"]["member"] == "small" and lineage["train_flops"] > 0
    for proc in run_cli_many([("--config", cfg, "--workdir", str(w)) for w in (killed, tmp_path / "ref")], parallel=2):
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert_bitwise_equal(member_arrays(killed), member_arrays(tmp_path / "ref"))


def test_grown_run_report_counts_its_parent(tiny_family, tmp_path):
    """Issue 23 item 5: the grown run's FLOPs, tokens and epochs include the lineage's."""
    cfg = _grown_config(tmp_path)
    w = tmp_path / "grown"
    run_cli("expand", "--config", cfg, "--from", str(tiny_family / "members" / "small"), "--workdir", str(w),
            check=True)
    run_cli("--config", cfg, "--workdir", str(w), check=True)
    parent = json.loads((tiny_family / "report.json").read_text())
    grown = json.loads((w / "report.json").read_text())
    small = parent["members"][0]
    assert grown["lineage"]["train_flops"] == pytest.approx(small["train_flops"])
    assert grown["members"][0]["cumulative_train_flops"] == pytest.approx(small["train_flops"]
                                                                        + grown["members"][0]["train_flops"])
    assert grown["total_train_flops"] == pytest.approx(small["train_flops"] + sum(m["train_flops"]
                                                                                 for m in grown["members"]))
    assert grown["flops_saved_fraction"] > 0  # against training medium and large from scratch
    assert grown["members"][0]["epochs"] > small["epochs"]  # the parent's passes over the same data count
    assert "Grown from" in (w / "report.md").read_text()


# ------------------------------------------------------------------------------------------------ export, report


def test_kill_export_then_rerun_is_bytewise(tiny_family, tmp_path):
    run_cli("export", "--workdir", str(tiny_family), "--all", "--out", str(tmp_path / "ref"), check=True)
    proc = run_cli("export", "--workdir", str(tiny_family), "--all", "--out", str(tmp_path / "killed"),
                   env={"JAXGROW_FAULT": "export_writing:1"})
    assert proc.returncode == KILLED
    run_cli("export", "--workdir", str(tiny_family), "--all", "--out", str(tmp_path / "killed"), check=True)
    assert files_of(tmp_path / "killed") == files_of(tmp_path / "ref")


def test_kill_at_the_report_then_rerun_reports_the_same(tiny_family, tmp_path):
    w = tmp_path / "run"
    proc = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(w), env={"JAXGROW_FAULT": "report_writing:1"})
    assert proc.returncode == KILLED and not (w / "report.json").exists()
    run_cli(*TINY_FAMILY_ARGS, "--workdir", str(w), check=True)
    assert_bitwise_equal(member_arrays(w), member_arrays(tiny_family))
    got, want = (json.loads((d / "report.json").read_text())["members"] for d in (w, tiny_family))
    assert [m["eval_loss"] for m in got] == [m["eval_loss"] for m in want]
    assert [m["kl_to_next"] for m in got] == [m["kl_to_next"] for m in want]
    assert (w / "eval_loss_vs_flops.png").exists() and (w / "lr_schedule.png").exists()


def test_rerunning_a_finished_run_keeps_every_report_section(tiny_family, tmp_path):
    """Issue 23 item 4: the rerun re-renders report.md from report.json and eval.json; no section is lost."""
    w = tmp_path / "run"
    shutil.copytree(tiny_family, w)
    run_cli("evaluate", "--workdir", str(w), "--suite", "piqa", "--limit", "4", check=True)
    assert "Benchmarks" in (w / "report.md").read_text()
    t0 = time.perf_counter()
    proc = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(w), check=True)
    assert "already finished" in proc.stdout
    md = (w / "report.md").read_text()
    assert "Benchmarks" in md and "piqa" in md and "KL(this‖next)" in md
    assert time.perf_counter() - t0 < 60  # nothing recomputed (KL and acceptance took 45-59 s before)


# ------------------------------------------------------------------------------------------------ checkpoints


def _flip_params(step_dir: Path) -> None:
    for f in sorted((step_dir / "params").rglob("*")):
        if f.is_file() and f.stat().st_size > 1000:
            data = bytearray(f.read_bytes())
            for i in range(len(data) // 3, len(data) // 3 + 64):
                data[i] ^= 0xFF
            f.write_bytes(bytes(data))


def test_damaged_member_checkpoint_is_quarantined_and_rebuilt(tiny_family, tmp_path):
    """Case 6: sample and export rebuild a damaged member from the stage's final checkpoint."""
    w = tmp_path / "run"
    shutil.copytree(tiny_family, w)
    member = w / "members" / "large"
    step = next(p.name for p in member.iterdir() if p.name.isdigit())
    _flip_params(member / step)
    proc = run_cli("sample", "--workdir", str(w), "--member", "large", "--prompt", "ROMEO:", "--max_new_tokens", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "is damaged" in proc.stderr and (member / "corrupt" / step).is_dir()
    assert_bitwise_equal(member_arrays(w), member_arrays(tiny_family))
    # with the stage's final checkpoint gone as well: one line naming the damaged path and what to do
    _flip_params(member / step)
    shutil.rmtree(w / "stages" / "2-large" / step)
    proc = run_cli("export", "--workdir", str(w), "--member", "large", "--out", str(tmp_path / "hf"))
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert f"{member}/{step} is damaged" in line and "rerun train" in line


def test_member_checkpoint_without_meta_is_set_aside_and_saved_again(tiny_family, tmp_path):
    """Case 7: a deleted members/<m>/<step>/meta no longer fails every rerun with StepAlreadyExistsError."""
    w = tmp_path / "run"
    shutil.copytree(tiny_family, w)
    member = w / "members" / "large"
    step = next(p.name for p in member.iterdir() if p.name.isdigit())
    shutil.rmtree(member / step / "meta")
    (w / "report.json").unlink()
    proc = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(w))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (member / "corrupt" / step).is_dir()
    assert_bitwise_equal(member_arrays(w), member_arrays(tiny_family))


def test_torn_last_metrics_record_is_skipped(tiny_family, tmp_path):
    """Case 8: what a kill or a full disk leaves at the end of metrics.jsonl."""
    w = tmp_path / "run"
    shutil.copytree(tiny_family, w)
    with open(w / "metrics.jsonl", "a") as f:
        f.write('{"stage": 2, "step": 99, "loss": 1.2')  # no closing brace, no newline
    (w / "report.json").unlink()
    (w / "eval_loss_vs_flops.png").unlink()
    proc = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(w))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (w / "eval_loss_vs_flops.png").exists()
    lines = (w / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn tail was cut before appending


# ------------------------------------------------------------------------------------------------ the workdir lock


def _start_train(workdir: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxgrow.main", *TINY_FAMILY_ARGS, "--workdir", str(workdir)],
                            cwd=REPO, env=_cli_env(env, 1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path_exists, timeout: float = 300) -> None:
    t0 = time.time()
    while not path_exists():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.5)


def test_a_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    """Case 9, local workdir: two processes on one workdir."""
    w = tmp_path / "run"
    first = _start_train(w)
    try:
        _wait_for(lambda: (w / "lock.json").exists())
        holder = json.loads((w / "lock.json").read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(w))
        assert second.returncode == 2
        assert f"is in use by pid {first.pid}" in second.stderr.strip().splitlines()[-1]
        _wait_for(lambda: (w / "stages").exists())
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    assert (w / "lock.json").exists()  # left behind by the killed holder
    third = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(w), check=True)
    assert "taking over the lock" in third.stderr
    assert not (w / "lock.json").exists()  # released at the end
    records = [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
    assert len({(r.get("stage"), r.get("step"), "eval_loss" in r) for r in records if "step" in r}) > 0


def test_lock_on_the_s3_emulator(tmp_path, s3_emulator):
    """Case 9, bucket workdir: the lock object is created with If-None-Match, so one of two racing writers wins."""
    from jaxgrow.family import lock

    w = "s3://jaxgrow-test/locked"
    held = lock.WorkdirLock(w, "test").acquire()
    try:
        code = ("import sys; from jaxgrow.family import lock\n"
                "try:\n    lock.acquire(sys.argv[1])\nexcept lock.WorkdirBusy as e:\n    print(e); sys.exit(2)\n")
        proc = subprocess.run([sys.executable, "-c", code, w], env={**os.environ, **s3_emulator}, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and f"pid {os.getpid()}" in proc.stdout, proc.stdout + proc.stderr
        proc = run_cli(*TINY_FAMILY_ARGS, "--workdir", w, env=s3_emulator)
        assert proc.returncode == 2 and "is in use by" in proc.stderr.strip().splitlines()[-1]
    finally:
        held.release()
    import s3fs

    fs = s3fs.S3FileSystem()
    assert not fs.exists("jaxgrow-test/locked/lock.json")
    # a dead holder's lock (a pid that does not exist on this host) is taken over
    fs.pipe("jaxgrow-test/locked/lock.json", json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 12345,
                                                          "started": 0, "heartbeat": 0, "token": "x"}).encode())
    code = "import sys; from jaxgrow.family import lock; lock.acquire(sys.argv[1]).release(); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code, w], env={**os.environ, **s3_emulator}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ leaks, evaluate


def test_evaluate_never_tokenizes_training_data(tiny_family, tmp_path):
    """Case 16: after a `touch` of a train file, evaluate reads only the eval split (cached) and writes no cache."""
    w = tmp_path / "run"
    shutil.copytree(tiny_family, w)
    before = sorted(p.name for p in (w / "data").iterdir())
    cfg = json.loads((w / "config.json").read_text())
    assert not cfg["data"]["train_files"]  # the shipped corpus: evaluate must not re-read it at all
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    proc = run_cli("evaluate", "--workdir", str(w), "--tasks", str(REPO / "tasks" / "shakespeare_continuation.jsonl"),
                   env={"TMPDIR": str(env_tmp)}, check=True)
    assert "tokenize" not in proc.stderr
    assert sorted(p.name for p in (w / "data").iterdir()) == before and not list(env_tmp.glob("jaxgrow-*"))


def test_az_hint_names_an_extra_that_exists():
    """Case 19."""
    import tomllib

    from jaxgrow import storage

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"][
        "optional-dependencies"]
    for scheme, package in storage.SCHEME_PACKAGES.items():
        if scheme == "hf":
            continue
        extra = {"gs": "gcs", "s3": "s3", "az": "az"}[scheme]
        assert extra in extras and package in (REPO / extras[extra]["file"][0]).read_text()


# ------------------------------------------------------------------------------------------------ issue 31: records


def test_damaged_budgets_and_report_are_rebuilt_by_the_rerun(tiny_family, tmp_path):
    """Case 5: an empty budgets.json and a truncated report.json on a finished run (a kill or a full disk mid-write)
    are rebuilt by the rerun of train, not a JSON traceback: the budgets from the config, checked against the member
    checkpoints (the damaged file kept aside), the report from the members and metrics."""
    w = tmp_path / "run"
    shutil.copytree(tiny_family, w)
    (w / "budgets.json").write_text("")
    report = (w / "report.json").read_text()
    (w / "report.json").write_text(report[: len(report) // 2])
    proc = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(w))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "budgets.json was damaged; rebuilt" in proc.stderr and "report.json is damaged" in proc.stderr
    assert json.loads((w / "budgets.json").read_text()) == json.loads((tiny_family / "budgets.json").read_text())
    assert (w / "budgets.json.damaged").read_text() == ""
    got, want = (json.loads((d / "report.json").read_text())["members"] for d in (w, tiny_family))
    assert [m["eval_loss"] for m in got] == [m["eval_loss"] for m in want]


def test_sample_and_export_rebuild_a_member_whose_meta_was_deleted(tiny_family, tmp_path):
    """Case 9: `export --all` no longer skips a member whose meta was deleted as "not finished", and `sample` no longer
    fails on it: the member is rebuilt from its stage's final checkpoint, as training rebuilds it."""
    w = tmp_path / "run"
    shutil.copytree(tiny_family, w)
    member = w / "members" / "large"
    step = next(p.name for p in member.iterdir() if p.name.isdigit())
    shutil.rmtree(member / step / "meta")
    proc = run_cli("export", "--workdir", str(w), "--all", "--out", str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["large", "medium", "small"]
    assert "was incomplete; rebuilt" in proc.stderr and (member / "corrupt" / step).is_dir()
    assert_bitwise_equal(member_arrays(w), member_arrays(tiny_family))
    out = run_cli("sample", "--workdir", str(w), "--member", "large", "--prompt", "ROMEO:", "--max_new_tokens", "3")
    assert out.returncode == 0 and "=== large ===" in out.stdout, out.stderr[-2000:]


def test_metrics_hold_one_record_per_step_after_a_kill_and_resume(tmp_path):
    """Case 14: what a killed run logged after its last checkpoint is logged again by the resumed run; the records of
    the killed run past that checkpoint are dropped at the resume, so metrics.jsonl keeps one record per step."""
    w = tmp_path / "run"
    args = ("--config", "configs/tiny.py", "--config.budget_scale=0.05", "--config.log.progress=False",
            "--config.log.every_steps=1", "--config.checkpoint.every_steps=10", "--workdir", str(w))
    proc = run_cli(*args, env={"JAXGROW_FAULT": "train_step:15"})
    assert proc.returncode == KILLED
    killed = [json.loads(line)["step"] for line in (w / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert max(killed) == 14  # steps 11-14 were logged after the checkpoint at 10
    run_cli(*args, check=True)
    records = [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 29  # every step once, in order
    evals = [r["step"] for r in records if "eval_loss" in r]
    assert len(evals) == len(set(evals))
