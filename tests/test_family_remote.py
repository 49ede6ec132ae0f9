"""Remote workdirs against a real S3 server (moto, started on 127.0.0.1 by the s3_emulator fixture):
the whole family pipeline with its data, checkpoints, metrics and report in a bucket, SIGKILL and
resume, and bad remote workdirs (exit 2, one line, nothing written)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import REPO, _cli_env, run_cli
from jaxgrow import storage
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.train import checkpoint


B = "s3://jaxgrow-test"
# family_tiny at a fifth of its budget (small 5 steps, medium 12, large 32), a stage checkpoint every
# 3 steps (several per stage), data read from the bucket's tokenized shards
FAMILY = ("--config", "configs/family_tiny.py", "--config.budget_scale=0.2", "--config.log.progress=False",
          "--config.log.every_steps=2", "--config.log.eval_every_steps=10", "--config.checkpoint.every_steps=3",
          f"--config.data.train_files={B}/tok/train", f"--config.data.eval_files={B}/tok/held")


def member_arrays(workdir) -> dict:
    _, stages = workdir_lib.load_setup_for_eval(workdir)
    return {s.name: [np.asarray(x) for x in jax.tree.leaves(jax.device_get(workdir_lib.member_params(workdir, s)))]
            for s in stages}


def final_losses(metrics_text: str) -> dict:
    """(member, kind) -> the last logged loss of that member (a resume re-logs steps: the last wins)."""
    out = {}
    for line in metrics_text.splitlines():
        r = json.loads(line)
        for kind in ("loss", "eval_loss"):
            if kind in r:
                out[(r["member"], kind)] = (r["step"], r[kind])
    return out


def make_text(path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = ["the", "king", "queen", "sword", "crown", "night", "speaks", "falls", "and", "of", "my", "lord", "land"]
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, rng.integers(20, 80)))}) + "\n"
                            for _ in range(n)))


@pytest.mark.slow
def test_family_in_an_s3_workdir_survives_sigkill_and_matches_a_local_run(tmp_path, s3_emulator):
    import s3fs

    fs = s3fs.S3FileSystem()
    make_text(tmp_path / "train.jsonl", 1500, seed=1)
    make_text(tmp_path / "held.jsonl", 100, seed=2)
    fs.put(str(tmp_path / "train.jsonl"), "jaxgrow-test/raw/train.jsonl")
    fs.put(str(tmp_path / "held.jsonl"), "jaxgrow-test/raw/held.jsonl")
    run_cli("tokenize", "--inputs", f"{B}/raw/train.jsonl", "--out", f"{B}/tok/train", "--vocab_size", "512",
            env=s3_emulator, check=True)
    run_cli("tokenize", "--inputs", f"{B}/raw/held.jsonl", "--out", f"{B}/tok/held", "--tokenizer", f"{B}/tok/train",
            env=s3_emulator, check=True)

    # SIGKILL from outside once stage 1 (medium) has a committed checkpoint in the bucket
    run = f"{B}/run"
    proc = subprocess.Popen([sys.executable, "-m", "jaxgrow.main", *FAMILY, "--workdir", run], cwd=REPO,
                            env=_cli_env(s3_emulator, 1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reference = tmp_path / "local"  # the uninterrupted reference, meanwhile (a local workdir, the same data)
    ref_proc = subprocess.Popen([sys.executable, "-m", "jaxgrow.main", *FAMILY, "--workdir", str(reference)], cwd=REPO,
                                env=_cli_env(s3_emulator, 1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    medium = f"{run}/stages/1-medium"
    deadline = time.time() + 600
    while not checkpoint.committed_steps(medium) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]  # killed, not finished
    assert checkpoint.committed_steps(medium), stderr[-3000:]
    assert not fs.exists(f"{run}/report.json") and not checkpoint.has_checkpoint(f"{run}/members/large")
    assert checkpoint.has_checkpoint(f"{run}/members/small")
    _, ref_err = ref_proc.communicate(timeout=900)
    assert ref_proc.returncode == 0, ref_err[-3000:]

    resumed = run_cli(*FAMILY, "--workdir", run, env=s3_emulator, check=True)  # the same command resumes
    assert "stage 0 (small): member checkpoint exists, skipping" in resumed.stderr
    assert "stage 1 (medium): resumed at step" in resumed.stderr, resumed.stderr[-3000:]
    report = json.loads(fs.cat(f"{run}/report.json"))
    local_report = json.loads((reference / "report.json").read_text())
    assert [m["eval_loss"] for m in report["members"]] == [m["eval_loss"] for m in local_report["members"]]
    records, torn = storage.read_metrics(run)  # a bucket workdir writes metrics/NNNNN.jsonl parts: one stream
    assert torn == 0 and not fs.exists(f"{run}/metrics.jsonl") and fs.find(f"{run}/metrics")
    assert final_losses("\n".join(json.dumps(r) for r in records)) == final_losses(
        (reference / "metrics.jsonl").read_text())
    remote_params, local_params = member_arrays(run), member_arrays(reference)
    assert remote_params.keys() == local_params.keys() == {"small", "medium", "large"}
    for name in local_params:  # bitwise
        assert all(np.array_equal(a.view(np.uint32), b.view(np.uint32))
                   for a, b in zip(remote_params[name], local_params[name], strict=True)), name
    for name in ("config.json", "budgets.json", "report.md", "eval_loss_vs_flops.png", "lr_schedule.png",
                 "tokenizer.json"):
        assert fs.exists(f"{run}/{name}"), name
    assert fs.find(f"{run}/tb") and json.loads(fs.cat(f"{run}/config.json")) == json.loads(
        (reference / "config.json").read_text())
    # the rolling keep (2) held in the bucket: only committed steps, no staging leftovers
    for stage in ("0-small", "1-medium", "2-large"):
        steps = checkpoint.committed_steps(f"{run}/stages/{stage}")
        assert 1 <= len(steps) <= 2, (stage, steps)
    # the commands that read a workdir work on the bucket too
    out = run_cli("sample", "--workdir", run, "--member", "small", "--prompt", "the king", "--max_new_tokens", "4",
                  env=s3_emulator, check=True)
    assert "=== small ===" in out.stdout
    run_cli("export", "--workdir", run, "--member", "large", "--out", f"{B}/export/large", env=s3_emulator, check=True)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.rsplit("/", 1)[1] for p in
                                                                      fs.ls(f"{B}/export/large")}


def test_bad_remote_workdirs_exit_2_one_line_nothing_written(tmp_path, s3_emulator):
    import s3fs

    fs = s3fs.S3FileSystem()
    cases = [("s3://no-such-bucket/run", "--workdir=s3://no-such-bucket/run: bucket 'no-such-bucket' does not exist"),
             ("foo://bucket/run", "--workdir=foo://bucket/run: unknown URL scheme 'foo://'"),
             ("S3://jaxgrow-test/run", "--workdir=S3://jaxgrow-test/run: write the URL scheme in lower case")]
    for workdir, message in cases:
        proc = run_cli("--config", "configs/tiny.py", "--workdir", workdir, env=s3_emulator)
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("jaxgrow: error:")]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert fs.ls("jaxgrow-test") == [] and fs.ls("", refresh=True) == ["jaxgrow-test"]
    assert not [p for p in Path.cwd().iterdir() if p.name.lower().endswith(":")]  # no local 's3:' / 'foo:' dirs


@pytest.mark.slow
def test_family_in_a_gcs_workdir_resumes_after_sigkill(gcs_emulator):
    """gs:// (gcp-storage-emulator): the raw-text data cache, checkpoints and report in the bucket."""
    import gcsfs

    fs = gcsfs.GCSFileSystem()
    run = "gs://jaxgrow-test/run"
    # budget_scale=0.1: small 2 steps, medium 6, and large only 2 (its `tokens`: the kill and the resume happen in
    # medium, so a long last stage would add run time, not coverage); a checkpoint every step; die right after the
    # 4th stage save returned (medium's step 2, committed)
    args = ("--config", "configs/family_tiny.py", "--config.budget_scale=0.1", "--config.log.progress=False",
            "--config.members.large.tokens=120000",
            "--config.checkpoint.every_steps=1", "--config.checkpoint.async_save_remote=False", "--workdir", run)
    killed = run_cli(*args, env={**gcs_emulator, "JAXGROW_FAULT": "checkpoint_saving:4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert checkpoint.committed_steps(f"{run}/stages/1-medium") == [1, 2]  # keep=2, each upload committed
    assert fs.exists(f"{run}/tokenizer.json") and fs.find(f"{run}/data")  # the tokenized raw text is cached
    resumed = run_cli(*args, env=gcs_emulator, check=True)
    assert "stage 1 (medium): resumed at step 2/6" in resumed.stderr, resumed.stderr[-3000:]
    report = json.loads(fs.cat(f"{run}/report.json"))
    assert [m["name"] for m in report["members"]] == ["small", "medium", "large"]
    assert all(np.isfinite(m["eval_loss"]) for m in report["members"])


@pytest.mark.slow
def test_a_store_that_stops_answering_mid_run_ends_with_one_line_and_the_last_checkpoint_restores(s3_emulator):
    """The bucket stops answering during a run (the proxy in front of the emulator closes: connections reset, then
    refused): after the storage libraries' retries the run ends with one line naming the endpoint, exit 1, and the
    same command on a live endpoint resumes from the last committed checkpoint."""
    sys.path.insert(0, str(REPO / "experiments"))
    from latency_proxy import LatencyProxy  # noqa: PLC0415

    run = f"{B}/outage"
    args = ("--config", "configs/family_tiny.py", "--config.budget_scale=0.1", "--config.log.progress=False",
            "--config.checkpoint.every_steps=1", "--workdir", run)
    host, port = s3_emulator["AWS_ENDPOINT_URL"].removeprefix("http://").split(":")
    with LatencyProxy(host, int(port), latency_ms=0) as proxy:
        endpoint = f"127.0.0.1:{proxy.port}"
        proc = subprocess.Popen([sys.executable, "-m", "jaxgrow.main", *args], cwd=REPO, text=True,
                                env=_cli_env({**s3_emulator, "AWS_ENDPOINT_URL": f"http://{endpoint}"}, 1),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        medium = f"{run}/stages/1-medium"
        deadline = time.time() + 600
        while not checkpoint.committed_steps(medium) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    # the proxy is gone: every request of the run now fails
    _, stderr = proc.communicate(timeout=600)
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 1, stderr[-3000:]
    assert lines[-1].startswith("jaxgrow: error: ") and endpoint in lines[-1], "\n".join(lines[-8:])
    assert "Traceback" not in stderr
    committed = checkpoint.committed_steps(medium)
    assert committed and not checkpoint.has_checkpoint(f"{run}/members/large")
    resumed = run_cli(*args, env=s3_emulator, check=True)  # the same command, the store answering again
    assert f"stage 1 (medium): resumed at step {committed[-1]}/" in resumed.stderr, resumed.stderr[-3000:]
    assert storage.join(run, "report.json").exists()
