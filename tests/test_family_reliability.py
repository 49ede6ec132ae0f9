"""Reliability: SIGKILL anywhere then bitwise-exact completion, SIGTERM, corrupt checkpoints,
config drift, bad inputs (exit 2, one line, nothing written), NaN guard."""

import json
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import REPO, TINY_FAMILY_ARGS, run_cli, run_cli_many
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.train import checkpoint


pytestmark = pytest.mark.slow

MEMBERS = ("small", "medium", "large")


def member_arrays(workdir: Path) -> dict:
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    return {s.name: jax.tree.map(np.asarray, jax.device_get(workdir_lib.member_params(workdir, s))) for s in stages}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        la, lb = jax.tree.leaves(a[name]), jax.tree.leaves(b[name])
        assert len(la) == len(lb)
        for x, y in zip(la, lb):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), name


# Each run resumes the previous one; the n-th time a point is reached *in that process* it dies.
KILLS = ["train_step:2",          # stage 0, before any checkpoint
         "checkpoint_saving:1",   # inside the first (async) stage checkpoint write
         "member_saving:1",       # inside the first member's checkpoint write
         "expanding:1",           # inside the small -> medium expansion
         "train_step:5",          # mid stage 1
         "checkpoint_saving:2",   # inside stage 1's final checkpoint write
         "train_step:10"]         # mid stage 2
KILL_ARGS = (*TINY_FAMILY_ARGS, "--config.checkpoint.every_steps=3", "--config.checkpoint.async_save=True")


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("killed")
    for fault in KILLS:
        proc = run_cli(*KILL_ARGS, "--workdir", str(workdir), env={"JAXGROW_FAULT": fault})
        assert proc.returncode == -signal.SIGKILL, (fault, proc.returncode, proc.stderr[-2000:])
    run_cli(*KILL_ARGS, "--workdir", str(workdir), check=True)
    return workdir


def test_sigkill_at_seven_points_then_rerun_is_bitwise_identical(killed_run, tiny_family):
    assert_bitwise_equal(member_arrays(killed_run), member_arrays(tiny_family))
    report = json.loads((killed_run / "report.json").read_text())
    assert [m["name"] for m in report["members"]] == list(MEMBERS)


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(killed_run, tiny_family, tmp_path):
    workdir = tmp_path / "corrupt"
    shutil.copytree(killed_run, workdir)
    stage = workdir / "stages" / "2-large"
    steps = sorted(int(p.name) for p in stage.iterdir() if p.name.isdigit())
    assert len(steps) == 2  # checkpoint.keep=2
    latest = stage / str(steps[-1])
    for f in sorted((latest / "params").rglob("*")):
        if f.is_file() and f.stat().st_size > 1000:  # array data: flip bytes in the middle
            data = bytearray(f.read_bytes())
            for i in range(len(data) // 3, len(data) // 3 + 64):
                data[i] ^= 0xFF
            f.write_bytes(bytes(data))
    shutil.rmtree(workdir / "members" / "large")
    proc = run_cli(*KILL_ARGS, "--workdir", str(workdir), check=True)
    assert f"checkpoint {stage}/{steps[-1]} is corrupt" in proc.stderr
    assert f"resumed at step {steps[0]}/" in proc.stderr
    assert (stage / "corrupt" / str(steps[-1])).is_dir()  # kept aside, never deleted
    assert_bitwise_equal(member_arrays(workdir), member_arrays(tiny_family))


def test_sigterm_saves_exits_143_and_the_rerun_continues(tiny_family, tmp_path):
    workdir = tmp_path / "term"
    # the 5th train step is stage 1's first (stage 0 has 4 steps at this budget)
    proc = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(workdir), env={"JAXGROW_FAULT": "train_step:5:TERM"})
    # 128 + SIGTERM: schedulers (Kubernetes Jobs, JobSet, SLURM --requeue) must not read a preemption as "finished"
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "SIGTERM" in proc.stderr
    assert checkpoint.has_checkpoint(workdir / "stages" / "1-medium")
    saved = sorted(int(p.name) for p in (workdir / "stages" / "1-medium").iterdir() if p.name.isdigit())
    assert saved == [1]
    assert not (workdir / "members" / "medium").exists()
    proc = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(workdir), check=True)
    assert "stage 0 (small): member checkpoint exists, skipping" in proc.stderr
    assert "stage 1 (medium): resumed at step 1/" in proc.stderr
    assert_bitwise_equal(member_arrays(workdir), member_arrays(tiny_family))


def test_config_drift_is_refused_listing_keys(tiny_family, tmp_path):
    run = tmp_path / "run"  # a copy: the shared family stays read-only for the tests reading it meanwhile
    shutil.copytree(tiny_family, run)
    before = sorted(str(p) for p in run.rglob("*"))
    proc = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(run), "--config.lr.peak=0.1",
                   "--config.members.large.ffn_size=512")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "differing keys: lr.peak, members.large.ffn_size" in line and "allow_config_change" in line
    assert sorted(str(p) for p in run.rglob("*")) == before
    # run-length and logging keys may change
    proc = run_cli(*TINY_FAMILY_ARGS, "--workdir", str(run), "--config.log.every_steps=5",
                   "--config.checkpoint.keep=4")
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_nonfinite_loss_stops_naming_step_and_stage_and_keeps_checkpoints(tmp_path):
    workdir = tmp_path / "nan"
    # LR that *grows* with size: fine for the first member, absurd (1e-3 * 3^30) for the second
    args = (*TINY_FAMILY_ARGS, "--config.lr.rule=power", "--config.lr.alpha=-30", "--config.lr.n_ref=98624",
            "--config.lr.peak=0.001", "--config.checkpoint.every_steps=2", "--config.log.every_steps=1")
    proc = run_cli(*args, "--workdir", str(workdir))
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "non-finite loss" in line and "of stage 1 (medium)" in line and "at or before step" in line
    assert checkpoint.has_checkpoint(workdir / "members" / "small")
    assert not (workdir / "members" / "medium").exists()
    # tolerated when asked: the bad updates are skipped and the run completes
    workdir2 = tmp_path / "nan_skip"
    proc = run_cli(*args, "--config.skip_nonfinite_steps=1000", "--workdir", str(workdir2))
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = [json.loads(line) for line in (workdir2 / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("nonfinite_steps", 0) > 0 for m in metrics if m.get("member") == "medium")


# ------------------------------------------------------------------------------------------------
# Bad input: exit code 2, one line naming the field or file, nothing written.

def _bad_inputs(tmp: Path) -> list[tuple[tuple, str]]:
    empty = tmp / "empty.txt"
    empty.write_text("")
    binary = tmp / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 64)
    short = tmp / "short.txt"
    short.write_text("To be, or not to be.")
    from jaxgrow.data import tokenizers as tokenizers_lib  # noqa: PLC0415

    tok = tokenizers_lib.train_bpe(["hello world, the quick brown fox"] * 50, 300)
    tok_path = tmp / "tok300.json"
    tok.save(str(tok_path))
    not_a_dir = tmp / "a_file"
    not_a_dir.write_text("x")
    F = "configs/family_tiny.py"
    vocab_change = tmp / "vocab_change.py"
    vocab_change.write_text("from configs.family_tiny import get_config as base\n\n"
                            "def get_config():\n    c = base()\n    c.members.large.vocab_size = 4096\n    return c\n")
    return [
        (("--config", "configs/nope.py"), "--config=configs/nope.py: cannot load it"),
        (("--config", F, "--config.model.colour=3"), "--config.model.colour: unknown config key 'colour'"),
        (("--config", F, "--config.members.small.hidden_size=0"), "members.small.hidden_size=0 must be a positive integer"),
        (("--config", F, "--config.members.large.num_heads=5"), "members.large.num_heads=5 must be divisible by members.large.num_kv_heads=2"),
        (("--config", F, "--config.members.medium.hidden_size=32"), "members.medium.hidden_size=32 shrinks from members.small.hidden_size=64"),
        (("--config", str(vocab_change)), "members.large.vocab_size=4096 must equal members.medium.vocab_size=2048"),
        (("--config", F, "--config.data.train_files=/nonexistent/*.txt", f"--config.data.eval_files={short}"), "data.train_files: no file matches '/nonexistent/*.txt'"),
        (("--config", F, f"--config.data.train_files={empty}", f"--config.data.eval_files={short}"), f"data.train_files: {empty} is empty"),
        (("--config", F, f"--config.data.train_files={binary}", f"--config.data.eval_files={short}"), f"data.train_files: {binary} is binary"),
        (("--config", F, f"--config.data.eval_files={short}", f"--config.data.train_files={REPO / 'README.md'}"), "has suffix '.md'"),
        (("--config", F, f"--config.data.train_files={tmp / 'train.txt'}", f"--config.data.eval_files={short}"), "shorter than one sequence"),
        (("--config", F, f"--config.data.tokenizer={tok_path}", "--config.model.vocab_size=299"), f"data.tokenizer: {tok_path} has 300 tokens but model.vocab_size=299"),
        (("--config", F, "--config.expansion.method=net2wider"), "expansion.method='net2wider' must be one of"),
        (("--config", F, "--config.mesh.fsdp=3"), "but there are 1 devices"),
        (("--config", F, "--config.model.dtype=float16"), "model.dtype='float16' must be one of"),
        ((F, not_a_dir / "run"), "is not writable"),
    ]


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path):
    (tmp_path / "train.txt").write_text(("It is a truth universally acknowledged. " * 400))
    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 12
    clis, workdirs = [], []
    for i, (args, message) in enumerate(cases):
        if isinstance(args[1], Path):  # unwritable workdir case
            clis.append(("--config", args[0], "--workdir", str(args[1]), "--config.budget_scale=0.01"))
            workdirs.append(args[1])
        else:
            workdirs.append(tmp_path / f"w{i}")
            clis.append((*args, "--workdir", str(workdirs[-1]), "--config.budget_scale=0.01"))
    for (args, message), workdir, proc in zip(cases, workdirs, run_cli_many(clis)):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr[-1500:])
        assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
        assert lines[-1].startswith("jaxgrow: error: ") and message in lines[-1], (message, lines[-1])
        assert not workdir.exists(), args  # nothing written


def test_expand_from_a_directory_without_checkpoint_exits_2(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    out = tmp_path / "out"
    proc = run_cli("expand", "--config", "configs/tiny.py", "--from", str(empty), "--workdir", str(out))
    assert proc.returncode == 2
    assert f"--from={empty} holds no checkpoint" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_ctrl_c_halfway_saves_and_the_rerun_resumes_not_from_zero(tmp_path):
    workdir = tmp_path / "ctrl_c"
    args = ("--config", "configs/tiny.py", "--config.budget_scale=0.05", "--config.log.progress=False",
            "--workdir", str(workdir))
    proc = run_cli(*args, env={"JAXGROW_FAULT": "train_step:15:INT"})  # halfway through 29 steps
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "SIGINT" in proc.stderr
    proc = run_cli(*args, check=True)
    assert "stage 0 (model): resumed at step 15/29" in proc.stderr
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "step" in r]  # (per-stage goodput records carry no step)
    assert max(steps) == 29


def test_expand_cli_writes_a_checkpoint_that_train_resumes_from(tiny_family, tmp_path):
    big = tmp_path / "big.py"
    big.write_text(
        "from configs.family_tiny import get_config as family\n"
        "from jaxgrow.config import model_config\n\n"
        "def get_config():\n"
        "    c = family()\n"
        "    c.members = type(c.members)()\n"
        "    c.model = model_config(vocab_size=2048, hidden_size=160, ffn_size=400, num_layers=5, num_heads=5,\n"
        "                           num_kv_heads=1, head_dim=32)\n"
        "    return c\n")
    out = tmp_path / "grown"
    proc = run_cli("expand", "--config", str(big), "--from", str(tiny_family / "members" / "small"),
                   "--workdir", str(out), check=True)
    assert "expanded checkpoint written" in proc.stdout
    assert (out / "tokenizer.json").read_bytes() == (tiny_family / "tokenizer.json").read_bytes()
    proc = run_cli("--config", str(big), "--workdir", str(out), "--config.budget_scale=0.02",
                   "--config.log.progress=False", check=True)
    assert "stage 0 (model): resumed at step 0/" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    small = json.loads((tiny_family / "report.json").read_text())["members"][0]["eval_loss"]
    assert report["members"][0]["eval_loss"] < small + 0.05  # grown from `small`, not from scratch (~7.6)
