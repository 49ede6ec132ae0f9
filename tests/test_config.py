"""Config validation: every error names the field; budgets follow the paper's cost rule."""

import importlib
import json

import pytest

from jaxgrow import config as config_lib, expand
from jaxgrow.family import checks, pipeline as family


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
    with pytest.raises(config_lib.ConfigError, match=field.replace("(", r"\(").replace(".", r"\.").replace("*", r"\*")):
        checks.validate(c)


def family_tiny():
    return importlib.import_module("configs.family_tiny").get_config()


def test_family_members_in_order_with_overrides():
    fam = checks.validate(family_tiny())
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
    with pytest.raises(config_lib.ConfigError, match=msg):
        checks.validate(c)


def test_config_drift_ignores_run_length_and_logging_keys():
    a = json.loads(family_tiny().to_json())
    b = json.loads(family_tiny().to_json())
    b["budget_scale"] = 0.1
    b["log"]["every_steps"] = 3
    b["checkpoint"]["keep"] = 5
    assert config_lib.drift(a, b) == []
    b["lr"]["peak"] = 1.0
    b["members"]["large"]["hidden_size"] = 256
    assert config_lib.drift(a, b) == ["lr.peak", "members.large.hidden_size"]


@pytest.mark.parametrize("changes,message", [
    ({"rule": "table", "table": "1e6:abc"}, "lr.table='1e6:abc' must be 'gpt3' or 'N:lr,N:lr,...'"),
    ({"rule": "table", "table": "1e6:-3e-4"}, "sizes and learning rates must be positive"),
    ({"rule": "power", "n_ref": 0}, "lr.n_ref=0 must be > 0"),
])
def test_bad_lr_settings_are_refused_by_validate(changes, message):
    c = family_tiny()
    c.lr.update(changes)
    with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.").replace("*", r"\*")):
        checks.validate(c)


def test_kaplan_rule_is_checked_for_every_member_before_anything_is_written(tmp_path):
    c = family_tiny()
    c.lr.rule = "kaplan"
    checks.validate(c)  # small members: positive LR
    # a member beyond ~1.2e10 non-embedding params gets a non-positive Kaplan LR
    config_lib.add_member(c, "huge", hidden_size=16384, ffn_size=65536, num_layers=64, num_heads=128, num_kv_heads=2)
    with pytest.raises(config_lib.ConfigError, match="kaplan.*non-positive LR.*member huge"):
        checks.validate(c)
    with pytest.raises(config_lib.ConfigError, match="member huge"):
        family.prepare(c, tmp_path / "w")
    assert not (tmp_path / "w").exists()  # no config.json, nothing at all


def test_unplaceable_gqa_growth_is_refused_before_training(tmp_path):
    c = config_lib.base_config()
    c.model = config_lib.model_config(vocab_size=512, head_dim=16)
    config_lib.add_member(c, "a", hidden_size=64, ffn_size=128, num_layers=2, num_heads=9, num_kv_heads=3)
    config_lib.add_member(c, "b", hidden_size=64, ffn_size=128, num_layers=2, num_heads=10, num_kv_heads=5)
    config_lib.validate(c)  # each member is valid on its own
    fam = config_lib.members(c)
    with pytest.raises(ValueError, match="num_kv_heads=5"):
        expand.check(fam[0].model, fam[1].model, "zero", "identity")
    with pytest.raises(config_lib.ConfigError, match="expansion members.a -> members.b: .*num_kv_heads=5"):
        family.prepare(c, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    c.members.b.num_kv_heads = 10  # 9/3 -> 10/10 places every old head next to a copy of its KV head
    expand.check(config_lib.members(c)[0].model, config_lib.members(c)[1].model, "zero", "identity")
