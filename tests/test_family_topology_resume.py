"""A run checkpointed on 8 devices (mesh 2,2,2) resumes on 4 devices and on 1: orbax restores onto the
new shardings, the data order is unchanged, and every later loss matches the uninterrupted 8-device
run within 1e-4 relative (only the reduction order differs), including across an expansion."""

import json

import pytest

from conftest import run_cli


pytestmark = pytest.mark.slow

ARGS = ("--config", "configs/family_micro.py")
MESH8 = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")
MESH4 = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=1")
MESH1 = ("--config.mesh.data=1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1")


def step_losses(workdir):
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            out[(r["stage"], r["step"])] = r["loss"]  # a resumed step's record replaces the earlier one
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted8")
    run_cli(*ARGS, *MESH8, "--workdir", str(workdir), devices=8, check=True)
    # goodput is reported: the buckets and the rest add up to the wall time
    gp = json.loads((workdir / "report.json").read_text())["goodput"]
    assert sum(gp["seconds"].values()) == pytest.approx(gp["wall_seconds"], rel=1e-6)
    assert 0 < gp["goodput"] < 1 and gp["seconds"]["compile"] > 0 and gp["seconds"]["expansion"] > 0
    assert "Goodput:" in (workdir / "report.md").read_text()
    assert sum("goodput" in json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()) == 2
    return step_losses(workdir)


# SIGTERM at global step 3 (in stage 0 of 8 steps, before the expansion) or 12 (in stage 1, after it)
@pytest.mark.parametrize("stop_at,devices,mesh", [(3, 4, MESH4), (12, 1, MESH1)])
def test_resume_on_fewer_devices_matches_uninterrupted(tmp_path, uninterrupted, stop_at, devices, mesh):
    workdir = tmp_path / "run"
    first = run_cli(*ARGS, *MESH8, "--workdir", str(workdir), devices=8,
                    env={"JAXGROW_FAULT": f"train_step:{stop_at}:TERM"})
    assert first.returncode == 143, first.stderr[-3000:]  # preempted: 128 + SIGTERM
    saved = step_losses(workdir)
    assert 0 < len(saved) < len(uninterrupted)
    second = run_cli(*ARGS, *mesh, "--workdir", str(workdir), devices=devices)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed at step" in second.stderr
    resumed = step_losses(workdir)
    assert set(resumed) == set(uninterrupted)
    later = [k for k in resumed if k not in saved]
    assert len(later) >= 5
    if stop_at < 8:
        assert {stage for stage, _ in later} == {0, 1}  # continued through the expansion
    for key in later:
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-4), key


def test_resume_with_more_devices_than_the_mesh_exits_2(tmp_path):
    proc = run_cli(*ARGS, *MESH8, "--workdir", str(tmp_path / "w"), devices=4)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("jaxgrow: error: mesh")
    assert not (tmp_path / "w").exists()
