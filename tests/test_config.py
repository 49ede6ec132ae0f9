"""Config validation: every error names the field; budgets follow the paper's cost rule."""

import importlib
import json

import pytest

from jaxgrow import budgets, config, flops


def tiny():
    return importlib.import_module("configs.tiny").get_config()


@pytest.mark.parametrize("mutate,field", [
    (lambda c: c.model.update(num_heads=6, num_kv_heads=4), "model.num_heads=6 must be divisible by model.num_kv_heads=4"),
    (lambda c: setattr(c.model, "hidden_size", 0), "model.hidden_size"),
    (lambda c: setattr(c.model, "num_layers", -2), "model.num_layers"),
    (lambda c: setattr(c.model, "head_dim", 33), "model.head_dim=33"),
    (lambda c: setattr(c.model, "dtype", "float16"), "model.dtype"),
    (lambda c: setattr(c.model, "remat_policy", "some"), "model.remat_policy"),
    (lambda c: setattr(c, "mode", "bogus"), "mode="),
    (lambda c: setattr(c.data, "seq_len", 0), "data.seq_len"),
    (lambda c: setattr(c.optimizer, "grad_accum_steps", 3), "data.batch_size=16 must be divisible by optimizer.grad_accum_steps=3"),
    (lambda c: setattr(c.lr, "rule", "magic"), "lr.rule"),
    (lambda c: setattr(c.lr, "decay", "step"), "lr.decay"),
    (lambda c: setattr(c.expansion, "method", "net2wider"), "expansion.method"),
    (lambda c: setattr(c.expansion, "depth", "sideways"), "expansion.depth"),
    (lambda c: setattr(c.mesh, "fsdp", 0), "mesh.fsdp"),
    (lambda c: (setattr(c.mesh, "data", -1), setattr(c.mesh, "fsdp", -1)), "at most one of mesh"),
    (lambda c: setattr(c, "budget_scale", 0.0), "budget_scale"),
    (lambda c: setattr(c, "profile_steps", "5:2"), "profile_steps"),
])
def test_invalid_configs_raise_errors_naming_the_field(mutate, field):
    c = tiny()
    mutate(c)
    with pytest.raises(config.ConfigError, match=field.replace("(", r"\(").replace(".", r"\.").replace("*", r"\*")):
        config.validate(c)


def family_tiny():
    return importlib.import_module("configs.family_tiny").get_config()


def test_family_members_in_order_with_overrides():
    fam = config.validate(family_tiny())
    assert [m.name for m in fam] == ["small", "medium", "large"]
    assert [m.model.hidden_size for m in fam] == [64, 96, 128]
    assert all(m.model.vocab_size == 2048 for m in fam)


@pytest.mark.parametrize("key,value,msg", [
    ("hidden_size", 32, "members.medium.hidden_size=32 shrinks from members.small.hidden_size=64"),
    ("num_layers", 1, "members.medium.num_layers=1 shrinks"),
    ("head_dim", 16, "members.medium.head_dim=16 must equal members.small.head_dim=32"),
    ("vocab_size", 4096, "members.medium.vocab_size=4096 must equal"),
])
def test_family_members_may_not_shrink_or_change_vocab_or_head_dim(key, value, msg):
    c = family_tiny()
    c.members.medium[key] = value
    with pytest.raises(config.ConfigError, match=msg):
        config.validate(c)


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


def test_config_drift_ignores_run_length_and_logging_keys():
    a = json.loads(family_tiny().to_json())
    b = json.loads(family_tiny().to_json())
    b["budget_scale"] = 0.1
    b["log"]["every_steps"] = 3
    b["checkpoint"]["keep"] = 5
    assert config.drift(a, b) == []
    b["lr"]["peak"] = 1.0
    b["members"]["large"]["hidden_size"] = 256
    assert config.drift(a, b) == ["lr.peak", "members.large.hidden_size"]
