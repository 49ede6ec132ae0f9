"""budgets.py (the paper's cost rule, overrides, teacher FLOPs) and the per-stage budget record in
the workdir that keeps a resumed run's report honest when budget keys change."""

import importlib
import json
import shutil

import ml_collections
import pytest

from jaxgrow.family import budgets, workdir as workdir_lib
from jaxgrow.model import flops


def family_tiny():
    return importlib.import_module("configs.family_tiny").get_config()


def test_paper_cost_rule_budgets():
    c = family_tiny()
    prog, ind = budgets.budgets(c, "progressive"), budgets.budgets(c, "independent")
    n = [s.non_embedding_params for s in ind]
    tokens_per_step = c.data.batch_size * c.data.seq_len
    # independent tokens proportional to size (up to rounding to whole steps)
    for s in ind:
        assert abs(s.tokens - c.budget.largest_tokens * s.non_embedding_params / n[-1]) <= tokens_per_step
    # progressive: cumulative cost after stage k ~ member k alone; the family costs the largest alone
    total = sum(s.train_flops for s in prog)
    assert total == pytest.approx(ind[-1].train_flops, rel=0.02)
    cumulative = 0.0
    for p, i in zip(prog, ind):
        cumulative += p.train_flops
        assert cumulative == pytest.approx(i.train_flops, rel=0.05)
        assert p.train_flops == pytest.approx(p.tokens * flops.train_flops_per_token(p.model, c.data.seq_len))
    assert prog[0].tokens == ind[0].tokens


def test_budget_scale_scales_every_budget():
    c = family_tiny()
    full = budgets.budgets(c)
    c.budget_scale = 0.5
    half = budgets.budgets(c)
    for a, b in zip(full, half):
        assert abs(b.steps - a.steps / 2) <= 1


def test_consistency_makes_the_family_cost_more_than_the_largest_alone_by_the_teacher_flops():
    c = family_tiny()
    c.consistency.weight = 0.5
    prog, ind = budgets.budgets(c, "progressive"), budgets.budgets(c, "independent")
    per_step = budgets.tokens_per_step(c)
    student = sum(s.steps * per_step * s.train_flops_per_token for s in prog)
    teacher = sum(s.teacher_active_steps * per_step * s.teacher_forward_flops_per_token for s in prog)
    assert student == pytest.approx(ind[-1].train_flops, rel=0.02)  # the cost rule holds for the students
    assert sum(s.train_flops for s in prog) == pytest.approx(student + teacher)
    assert teacher > 0.05 * student  # and the teachers' forwards come on top


def test_a_member_tokens_override_sets_its_cost_equivalent_total_in_progressive_mode():
    c = family_tiny()
    c.members.medium.tokens = 300_000
    seq, per_step = c.data.seq_len, budgets.tokens_per_step(c)
    ind, prog = budgets.budgets(c, "independent"), budgets.budgets(c, "progressive")
    f = [flops.train_flops_per_token(s.model, seq) for s in prog]
    t_small = c.budget.largest_tokens * ind[0].non_embedding_params / ind[-1].non_embedding_params
    assert abs(ind[1].tokens - 300_000) <= per_step  # independent: trains exactly the override
    expected = (f[1] * 300_000 - f[0] * t_small) / f[1]  # progressive: (F_k T_k - F_k-1 T_k-1) / F_k
    assert abs(prog[1].tokens - expected) <= per_step
    assert prog[1].tokens < 300_000
    expected_large = (f[2] * c.budget.largest_tokens - f[1] * 300_000) / f[2]
    assert abs(prog[2].tokens - expected_large) <= per_step


def test_recorded_budgets_survive_a_changed_budget_on_resume(tiny_family, tmp_path):
    recorded = json.loads((tiny_family / workdir_lib.BUDGETS_FILE).read_text())
    cfg, stages = workdir_lib.load_setup_for_eval(tiny_family)
    assert list(recorded) == [s.name for s in stages]  # every started stage was recorded
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(tiny_family / workdir_lib.BUDGETS_FILE, work)
    saved = json.loads((tiny_family / "config.json").read_text())
    saved["budget_scale"] *= 3  # a resumable key: a rerun may change it
    (work / "config.json").write_text(json.dumps(saved))
    _, after = workdir_lib.load_setup_for_eval(work)
    assert [(s.steps, s.tokens, s.train_flops) for s in after] == [(s.steps, s.tokens, s.train_flops) for s in stages]
    fresh = budgets.budgets(ml_collections.ConfigDict(saved))
    assert fresh[-1].steps > stages[-1].steps  # the new config alone would have reported other budgets
    # a stage not started before the change takes the new budget
    del recorded["large"]
    (work / workdir_lib.BUDGETS_FILE).write_text(json.dumps(recorded))
    _, mixed = workdir_lib.load_setup_for_eval(work)
    assert mixed[:2] == after[:2] and mixed[2].steps == fresh[2].steps
