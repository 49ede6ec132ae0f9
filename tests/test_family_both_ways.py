"""Families in both directions, end to end: a pruned family (the largest from scratch, then each smaller member pruned
from it and distilled), a spelled-out transition table (grow, grow, then re-distil the smallest from the largest),
and `jaxgrow prune` of a trained member into a new run that `train` continues: killed anywhere, it resumes bitwise,
and its exported member matches transformers."""

from __future__ import annotations

import json
import shutil
import signal

import jax
import numpy as np
import pytest
from test_family_reliability import assert_bitwise_equal, member_arrays

from conftest import TINY_FAMILY_ARGS, run_cli, run_cli_many
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.model import flops


pytestmark = pytest.mark.slow

KILLED = -signal.SIGKILL


def test_a_pruned_family_reports_each_stage_s_transition_and_its_teacher_flops(tmp_path):
    """The issue's command: `--config.mode=pruned` on family_tiny (at the tiny fixture's budget)."""
    w = tmp_path / "pruned"
    proc = run_cli(*TINY_FAMILY_ARGS, "--config.mode=pruned", "--workdir", str(w), check=True)
    assert "pruned large -> medium (activation importance)" in proc.stderr
    assert "pruned large -> small (activation importance)" in proc.stderr
    report = json.loads((w / "report.json").read_text())
    members = {m["name"]: m for m in report["members"]}
    assert [m["name"] for m in report["members"]] == ["small", "medium", "large"]  # family (size) order
    assert [m["stage"] for m in report["members"]] == [2, 1, 0]  # trained largest first
    assert members["large"]["transition_text"] == "scratch; ce"
    seq = 128
    for name in ("small", "medium"):
        m = members[name]
        assert m["transition_text"] == "prune from large; ce + distil from large, weight 1"
        teacher = m["tokens"] * flops.forward_flops_per_token(_model(w, "large"), seq)
        assert m["teacher_forward_flops"] == pytest.approx(teacher)
        assert m["train_flops"] == pytest.approx(m["tokens"] * m["train_flops_per_token"] + teacher)
        assert np.isfinite(m["eval_loss"])
    assert report["total_train_flops"] == pytest.approx(sum(m["train_flops"] for m in report["members"]))
    metrics = [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
    assert all(r["distill_weight"] == 1.0 and r["distill_kl"] > 0 for r in metrics
               if r.get("member") in ("small", "medium") and "distill_kl" in r)
    assert any("distill_kl" in r for r in metrics if r.get("member") == "small")
    assert "prune from large" in (w / "report.md").read_text()


def _model(workdir, name):
    _, stages = workdir_lib.load_setup_for_eval(workdir)
    return next(s.model for s in stages if s.name == name)


def test_a_custom_table_grows_twice_then_re_distils_the_smallest_from_the_largest(tiny_family, tmp_path):
    """The table `small=scratch; medium=grow(small); large=grow(medium); small2=grow(small)+distil(large)` on a copy of
    the tiny family: its three members are the fixture's (skipped), the fourth row trains from them."""
    w = tmp_path / "table"
    shutil.copytree(tiny_family, w)
    cfg = tmp_path / "table.py"
    cfg.write_text("from configs.family_tiny import get_config as base\nfrom jaxgrow.config import add_member\n\n"
                   "def get_config():\n    c = base()\n"
                   "    add_member(c, 'small2', tokens=120_000, hidden_size=64, ffn_size=192, num_layers=2, num_heads=2)\n"
                   "    c.transitions = ('small=scratch; medium=grow(small); large=grow(medium); '\n"
                   "                     'small2=grow(small)+distil(large)')\n    return c\n")
    proc = run_cli("--config", str(cfg), *TINY_FAMILY_ARGS[2:], "--config.allow_config_change=True",
                   "--workdir", str(w), check=True)
    for name in ("small", "medium", "large"):
        assert f"({name}): member checkpoint exists, skipping" in proc.stderr
    assert "stage 3 (small2): expanded small -> small2" in proc.stderr
    report = json.loads((w / "report.json").read_text())
    members = {m["name"]: m for m in report["members"]}
    assert report["transitions"] and "custom transition table" in (w / "report.md").read_text()
    assert members["small2"]["transition_text"] == "grow from small; ce + distil from large, weight 1"
    assert members["small2"]["teacher_forward_flops"] > 0 and members["small2"]["stage"] == 3
    assert [m["name"] for m in report["members"]] == ["small", "small2", "medium", "large"]
    # the re-distilled member started from small's weights exactly (identity growth) and trained on
    assert members["small2"]["eval_loss"] < members["small"]["eval_loss"]
    assert_bitwise_equal({k: v for k, v in member_arrays(w).items() if k != "small2"}, member_arrays(tiny_family))


SMALL = ("from jaxgrow.config import add_member, base_config, model_config\n\n"
         "def get_config():\n    c = base_config()\n"
         "    c.model = model_config(vocab_size=2048, head_dim=32, num_kv_heads=1)\n"
         "    add_member(c, 'cut', hidden_size=64, ffn_size=192, num_layers=2, num_heads=2)\n"
         "    c.budget.largest_tokens = 14_000\n    c.data.eval_batches = 2\n    c.checkpoint.every_steps = 2\n"
         "    c.log.progress = False\n    return c\n")


def test_prune_a_trained_member_then_train_killed_anywhere_resumes_bitwise_and_exports(tiny_family, tmp_path):
    """`jaxgrow prune --from W/members/large --config SMALL.py --workdir X` then `train`; SIGKILL inside the prune and
    inside training, then the same commands, give the uninterrupted run bitwise; the pruned member, distilled from its
    parent by default, exports to a Llama checkpoint whose logits transformers reproduces."""
    cfg = tmp_path / "small.py"
    cfg.write_text(SMALL)
    src = str(tiny_family / "members" / "large")
    prune = lambda w, **kw: ("prune", "--config", str(cfg), "--from", src, "--workdir", str(w))  # noqa: E731
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    first = run_cli_many([prune(ref), prune(killed)], parallel=2)
    assert first[0].returncode == 0, first[0].stderr[-2000:]
    assert "continue with: jaxgrow train" in first[0].stdout
    lineage = json.loads((ref / "lineage.json").read_text())
    assert lineage["complete"] and lineage["kind"] == "prune" and lineage["parent"]["member"] == "large"
    # kill inside training at a step after the first checkpoint, and inside the pruned run's report
    for fault in ("train_step:3", "report_writing:1"):
        proc = run_cli("--config", str(cfg), "--workdir", str(killed), env={"JAXGROW_FAULT": fault})
        assert proc.returncode == KILLED, (fault, proc.stderr[-2000:])
    run_cli_many([("--config", str(cfg), "--workdir", str(w)) for w in (ref, killed)], parallel=2)
    assert_bitwise_equal(member_arrays(killed), member_arrays(ref))
    report = json.loads((ref / "report.json").read_text())
    (cut,) = report["members"]
    assert cut["transition_text"].startswith(f"scratch; ce + distil from {src}")  # the parent is the default teacher
    assert report["lineage"]["kind"] == "prune" and "Pruned from" in (ref / "report.md").read_text()
    # a kill between the pruned run's lineage record and its checkpoint: the same prune command finishes it
    again = tmp_path / "again"
    proc = run_cli(*prune(again), env={"JAXGROW_FAULT": "expand_saving:1"})
    assert proc.returncode == KILLED and not (again / "stages" / "0-cut" / "0").exists()
    run_cli(*prune(again), check=True)
    assert json.loads((again / "lineage.json").read_text())["complete"]
    # the exported pruned member: transformers computes its logits
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    out = tmp_path / "hf"
    run_cli("export", "--workdir", str(ref), "--member", "cut", "--out", str(out), check=True)
    model = transformers.LlamaForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    _, stages = workdir_lib.load_setup_for_eval(ref)
    params = jax.device_get(workdir_lib.member_params(ref, stages[0]))
    tokens = np.random.default_rng(3).integers(0, 2048, (2, 24)).astype(np.int32)
    from hf_common import our_logits  # noqa: PLC0415

    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(theirs, our_logits(params, stages[0].model, tokens), atol=1e-4, rtol=0)
