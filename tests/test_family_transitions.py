"""The transition table (family/transitions.py) and the cost rule read from it (family/budgets.py): presets, a table
spelled out, its refusals, and a pruned family that costs what a progressive one does."""

import importlib

import pytest

from jaxgrow import config as config_lib
from jaxgrow.family import budgets, run_plan, transitions
from jaxgrow.model import flops


def tiny(**overrides):
    c = importlib.import_module("configs.family_tiny").get_config()
    for key, value in overrides.items():
        c[key] = value
    return c


def rows_of(cfg):
    return [(r.member, r.init, r.source, r.teacher) for r in budgets.table(cfg)]


def test_presets_fill_the_table():
    assert rows_of(tiny()) == [("small", "scratch", None, None), ("medium", "grow", "small", None),
                               ("large", "grow", "medium", None)]
    assert rows_of(tiny(mode="independent")) == [("small", "scratch", None, None), ("medium", "scratch", None, None),
                                                 ("large", "scratch", None, None)]
    # Minitron's recipe: the largest from scratch, then each smaller one (largest first) pruned from it and distilled
    assert rows_of(tiny(mode="pruned")) == [("large", "scratch", None, None), ("medium", "prune", "large", "large"),
                                            ("small", "prune", "large", "large")]
    c = tiny()
    c.consistency.weight, c.consistency.fraction = 0.5, 0.25
    cons = budgets.table(c)
    assert [(r.teacher, r.weight, r.decay_fraction) for r in cons] == [(None, 0.0, 0.0), ("small", 0.5, 0.25),
                                                                      ("medium", 0.5, 0.25)]


def test_a_spelled_out_table_with_a_re_distilled_member():
    c = tiny(transitions="small=scratch; medium=grow(small); large=grow(medium); small2=grow(small)+distil(large)")
    config_lib.add_member(c, "small2", tokens=100_000, hidden_size=64, ffn_size=192, num_layers=2, num_heads=2)
    plan = run_plan.resolve(c)
    assert [s.name for s in plan.stages] == ["small", "medium", "large", "small2"]
    small2 = plan.stage("small2")
    assert small2.transition.describe() == "grow from small; ce + distil from large, weight 1"
    # the teacher's forwards are in the stage's FLOPs, for every step (a constant weight)
    per_step = c.data.batch_size * c.data.seq_len
    teacher = flops.forward_flops_per_token(plan.stage("large").model, c.data.seq_len)
    assert small2.teacher_active_steps == small2.steps
    assert small2.train_flops == pytest.approx(small2.tokens * small2.train_flops_per_token
                                               + small2.steps * per_step * teacher)
    assert [s.name for s in plan.family_order()] == ["small", "small2", "medium", "large"]
    d = plan.distill(small2)
    assert d.teacher_cfg.hidden_size == 128 and d.decay_steps == 0 and d.weight == 1.0
    c.distill.weight = 0.0  # off everywhere
    assert run_plan.resolve(c).stage("small2").transition.distils is False


@pytest.mark.parametrize("table,message", [
    ("small=scratch; medium=grow(large); large=grow(medium)", "source 'large' is used before it exists"),
    ("small=scratch; medium=grow(small); large=grow(medium)+distil(large)", "its teacher is the member itself"),
    ("small=scratch; medium=grow(small); large=grow(medium)+distil(huge)", "teacher 'huge' is not a member"),
    ("small=scratch; medium=grow(small); medium=grow(small); large=grow(medium)", "member 'medium' is trained twice"),
    ("small=scratch; large=grow(small)", "members ['medium'] have no row"),
    ("small=scratch; medium=grow(small); large=grow(medium); huge=scratch", "'huge' is not a member"),
    ("small=scratch; medium=explode(small); large=grow(medium)", "row 2 'medium=explode(small)' is not"),
    ("small=prune(large); medium=grow(small); large=scratch", "source 'large' is used before it exists"),
    (" ; ", "the table is empty"),
])
def test_a_bad_table_is_refused_naming_the_row(table, message):
    with pytest.raises(config_lib.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        run_plan.resolve(tiny(transitions=table))


def test_growing_by_pruning_or_shrinking_by_growth_is_refused():
    with pytest.raises(config_lib.ConfigError, match="pruning members.medium -> members.large: dst_cfg.hidden_size=128 grows from 96; pruning only shrinks"):
        c = tiny(transitions="small=scratch; medium=grow(small); large=prune(medium)")
        run_plan.resolve(c)
    with pytest.raises(config_lib.ConfigError, match="members.small.hidden_size=64 shrinks from members.large"):
        run_plan.resolve(tiny(transitions="large=scratch; medium=prune(large); small=grow(large)"))


def test_a_pruned_family_costs_what_a_progressive_one_does():
    """Both families cost what their largest member alone does: the pruned one spends budget.distill_share of it on
    the distillation stages (teacher forwards included) and the rest on the largest member."""
    c = tiny(budget_scale=4.0)
    progressive = budgets.budgets(c)
    pruned = budgets.budgets(tiny(mode="pruned", budget_scale=4.0))
    total = lambda stages: sum(s.train_flops for s in stages)  # noqa: E731
    assert total(pruned) == pytest.approx(total(progressive), rel=0.01)
    largest = next(s for s in pruned if s.name == "large")
    alone = budgets.budgets(tiny(mode="independent", budget_scale=4.0))[-1]
    share = c.budget.distill_share
    assert largest.tokens == pytest.approx((1 - share) * alone.tokens, rel=0.01)
    distil = [s for s in pruned if s.transition.init == "prune"]
    assert sum(s.train_flops for s in distil) == pytest.approx(share * alone.train_flops, rel=0.02)
    for s in distil:  # every step pays the teacher's forward
        assert s.teacher_active_steps == s.steps and s.teacher_forward_flops_per_token == pytest.approx(
            flops.forward_flops_per_token(largest.model, c.data.seq_len))


def test_a_mode_outside_the_presets_is_refused():
    with pytest.raises(config_lib.ConfigError, match="mode='sideways' must be 'progressive', 'independent' or 'pruned'"):
        run_plan.resolve(tiny(mode="sideways"))


def test_transitions_parse_and_describe():
    rows = transitions.parse("a=scratch; b=prune(a)+distil(gs://bucket/run/members/big)", 0.5)
    assert rows[1].init == "prune" and rows[1].source == "a" and transitions.teacher_is_path(rows[1].teacher)
    assert rows[1].weight == 0.5 and rows[1].describe() == "prune from a; ce + distil from gs://bucket/run/members/big, weight 0.5"
    assert transitions.order(rows) == ["a", "b"]
