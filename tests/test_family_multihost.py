"""Two CPU processes joined by jax.distributed train like one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO, run_cli


pytestmark = pytest.mark.slow

ARGS = ("--config", "configs/tiny.py", "--config.budget_scale=0.02", "--config.log.every_steps=1",
        "--config.log.progress=False", "--config.checkpoint.every_steps=5", "--config.data.eval_batches=2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def test_two_processes_match_one_process(tmp_path):
    single = tmp_path / "single"
    run_cli(*ARGS, "--workdir", str(single), devices=2, check=True)

    multi = tmp_path / "multi"
    port = free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxgrow.main", *ARGS, "--workdir", str(multi)],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "process 0 of 2" in outs[0][1] and "process 1 of 2" in outs[1][1]
    a, b = losses(single), losses(multi)
    assert len(a) == len(b) >= 10
    for (sa, la), (sb, lb) in zip(a, b):
        assert sa == sb and abs(la - lb) <= 1e-5, (sa, la, lb)
    assert (multi / "members" / "model").is_dir() and (multi / "report.json").exists()
