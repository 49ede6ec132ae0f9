"""End-to-end family runs: report fields and invariants, both modes, resume between stages."""

import json
import os
import shutil

import pytest

from conftest import REPO, TINY_FAMILY_ARGS, run_cli
from jaxgrow.family import budgets, workdir as workdir_lib


pytestmark = pytest.mark.slow

REPORT_MEMBER_FIELDS = ("name", "params", "non_embedding_params", "tokens", "train_flops", "eval_loss", "kl_to_next")


def check_report(workdir, mode):
    report = json.loads((workdir / "report.json").read_text())
    assert report["mode"] == mode
    assert "3 x forward" in report["flops_convention"]
    members = report["members"]
    assert [m["name"] for m in members] == ["small", "medium", "large"]
    for m in members:
        for key in REPORT_MEMBER_FIELDS:
            assert key in m
            if key != "kl_to_next" or m is not members[-1]:
                assert m[key] is not None, key
        assert m["tokens"] > 0 and m["train_flops"] == pytest.approx(m["tokens"] * m["train_flops_per_token"])
    assert members[-1]["kl_to_next"] is None
    assert all(m["kl_to_next"] > 0 and m["kl_from_next"] > 0 for m in members[:-1])
    # FLOPs add up
    assert report["total_train_flops"] == pytest.approx(sum(m["train_flops"] for m in members))
    assert members[-1]["cumulative_train_flops"] == pytest.approx(report["total_train_flops"])
    # every member better than the one before
    losses = [m["eval_loss"] for m in members]
    assert losses == sorted(losses, reverse=True), losses
    for name in ("report.md", "eval_loss_vs_flops.png", "lr_schedule.png"):
        assert (workdir / name).stat().st_size > 0
    return report


def test_progressive_family_report(tiny_family):
    report = check_report(tiny_family, "progressive")
    cfg, stages = workdir_lib.load_setup_for_eval(tiny_family)
    independent = budgets.budgets(cfg, "independent")
    # the paper's cost rule: the progressive family costs what training the largest member alone costs
    assert report["total_train_flops"] == pytest.approx(independent[-1].train_flops, rel=0.02)
    assert report["independent_total_train_flops"] == pytest.approx(sum(s.train_flops for s in independent))
    saved = report["flops_saved_fraction"]
    assert saved == pytest.approx(1 - report["total_train_flops"] / report["independent_total_train_flops"])
    assert 0.05 < saved < 0.5
    # tokens per member match the stage budgets; the first stage trains like its independent twin
    assert [m["tokens"] for m in report["members"]] == [s.tokens for s in stages]
    assert report["members"][0]["tokens"] == independent[0].tokens
    metrics = [json.loads(line) for line in (tiny_family / "metrics.jsonl").read_text().splitlines()]
    assert {m["member"] for m in metrics if "eval_loss" in m} == {"small", "medium", "large"}
    text = (tiny_family / "report.md").read_text()
    assert "| large |" in text and "saved" in text


@pytest.fixture(scope="module")
def independent_family(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("independent")
    run_cli(*TINY_FAMILY_ARGS, "--config.mode=independent", "--workdir", str(workdir), check=True)
    return workdir


def test_independent_family_report(tiny_family, independent_family):
    workdir = independent_family
    report = check_report(workdir, "independent")
    assert report["flops_saved_fraction"] == pytest.approx(0.0, abs=1e-12)
    progressive = json.loads((tiny_family / "report.json").read_text())
    assert report["total_train_flops"] == pytest.approx(progressive["independent_total_train_flops"])
    # the first member is trained identically in both modes (same seed, data order and budget)
    assert report["members"][0]["eval_loss"] == pytest.approx(progressive["members"][0]["eval_loss"], abs=1e-6)
    # independent members see tokens proportional to their non-embedding size (up to whole steps)
    cfg, _ = workdir_lib.load_setup_for_eval(workdir)
    largest = report["members"][-1]
    per_step = cfg.data.batch_size * cfg.data.seq_len
    for m in report["members"]:
        target = largest["tokens"] * m["non_embedding_params"] / largest["non_embedding_params"]
        assert abs(m["tokens"] - target) <= per_step


@pytest.mark.parametrize("mode", ["progressive", "independent"])
def test_rerun_after_a_kill_between_stages_does_not_redo_finished_members(tiny_family, independent_family,
                                                                          tmp_path, mode):
    workdir = tmp_path / mode
    shutil.copytree(tiny_family if mode == "progressive" else independent_family, workdir)
    before = json.loads((workdir / "report.json").read_text())
    # the state a kill right after stage 1 leaves: no trace of the last stage
    shutil.rmtree(workdir / "members" / "large")
    shutil.rmtree(workdir / "stages" / "2-large")
    for name in ("report.json", "report.md"):
        (workdir / name).unlink()
    stamps = {p: p.stat().st_mtime_ns for p in (workdir / "members").rglob("*") if p.is_file()}
    proc = run_cli(*TINY_FAMILY_ARGS, f"--config.mode={mode}", "--workdir", str(workdir), check=True)
    assert "stage 0 (small): member checkpoint exists, skipping" in proc.stderr
    assert "stage 1 (medium): member checkpoint exists, skipping" in proc.stderr
    assert "stage 2 (large): done" in proc.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished members untouched
    after = json.loads((workdir / "report.json").read_text())
    # the redone stage reproduces the uninterrupted result exactly (same seed, expansion key, data position)
    assert [m["eval_loss"] for m in after["members"]] == [m["eval_loss"] for m in before["members"]]


def test_a_relative_workdir_works(tiny_family, tmp_path):
    relative = os.path.relpath(tmp_path / "rel", REPO)
    assert not os.path.isabs(relative)
    # the tiny family's own command line (its programs are in the session's compilation cache)
    run_cli(*TINY_FAMILY_ARGS, "--workdir", relative, check=True)
    assert (tmp_path / "rel" / "members" / "large").is_dir() and (tmp_path / "rel" / "report.json").exists()
    got = json.loads((tmp_path / "rel" / "report.json").read_text())
    want = json.loads((tiny_family / "report.json").read_text())
    assert [m["eval_loss"] for m in got["members"]] == [m["eval_loss"] for m in want["members"]]
