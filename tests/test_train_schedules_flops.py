"""LR schedule factory and the analytic FLOPs convention (checked against XLA's cost analysis)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgrow import config as config_lib
from jaxgrow.model import flops, sharding
from jaxgrow.train import schedules, trainer


SIZES = [1e5, 1e6, 3e7, 1.25e8, 5e8, 1.3e9, 7e9, 2e10]


@pytest.mark.parametrize("rule,kw", [("power", dict(peak=3e-3, n_ref=1e6, alpha=0.5)), ("kaplan", {}),
                                     ("table", dict(table="gpt3")), ("table", dict(table="1e6:1e-2,1e8:1e-3"))])
def test_peak_lr_is_monotone_non_increasing_in_size(rule, kw):
    sizes = SIZES if rule != "kaplan" else SIZES[:-1]
    peaks = [schedules.peak_lr(n, rule, **kw) for n in sizes]
    assert all(a >= b for a, b in zip(peaks, peaks[1:]))
    assert all(p > 0 for p in peaks)


def test_peak_values_match_hand_computation():
    assert schedules.peak_lr(4e6, "power", peak=1e-3, n_ref=1e6, alpha=0.5) == pytest.approx(5e-4)
    assert schedules.peak_lr(1e8, "kaplan") == pytest.approx(0.003239 - 0.0001395 * math.log(1e8))
    assert schedules.peak_lr(1.3e9, "table") == pytest.approx(2e-4)
    # halfway between 350M (3e-4) and 760M (2.5e-4) in log-log space
    mid = math.exp((math.log(350e6) + math.log(760e6)) / 2)
    assert schedules.peak_lr(mid, "table") == pytest.approx(math.sqrt(3e-4 * 2.5e-4))
    assert schedules.peak_lr(1e3, "table") == pytest.approx(6e-4)  # clamped below the table
    assert schedules.peak_lr(123, "constant", peak=0.01) == 0.01
    with pytest.raises(ValueError, match="lr.table"):
        schedules.peak_lr(1e6, "table", table="nonsense")


@pytest.mark.parametrize("decay", ["cosine", "linear", "wsd"])
def test_warmup_peak_and_floor(decay):
    s = schedules.make_lr_schedule(1e6, 1000, rule="constant", peak=1e-3, warmup_steps=100, decay=decay,
                                   min_lr_ratio=0.1, wsd_decay_fraction=0.2)
    assert float(s(0)) == pytest.approx(1e-3 / 101)  # near 0
    assert float(s(49)) == pytest.approx(1e-3 * 50 / 101)
    assert float(s(100)) == pytest.approx(1e-3)  # the peak at warmup_steps
    assert float(s(1000)) == pytest.approx(1e-4)  # the floor at total_steps
    assert float(s(5000)) == pytest.approx(1e-4)
    values = np.array([float(s(i)) for i in range(100, 1001)])
    assert np.all(np.diff(values) <= 1e-12)  # non-increasing after warmup
    if decay == "cosine":
        assert float(s(550)) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    if decay == "linear":
        assert float(s(550)) == pytest.approx(1e-3 - 0.9e-3 * 0.5)
    if decay == "wsd":
        assert float(s(800)) == pytest.approx(1e-3)  # stable until the last 20% of the post-warmup steps
        assert float(s(900)) == pytest.approx(1e-3 - 0.9e-3 * (900 - 820) / 180)


def test_each_stage_rewarms_to_its_own_peak():
    import importlib

    from jaxgrow.family import budgets  # noqa: PLC0415

    c = importlib.import_module("configs.family_tiny").get_config()
    c.lr.rule = "power"
    stages = budgets.budgets(c)
    peaks = []
    for st in stages:
        s = budgets.lr_schedule(c, st)
        w = int(c.lr.warmup_fraction * st.steps)
        assert float(s(0)) < float(s(w))
        peaks.append(float(s(w)))
    assert peaks == sorted(peaks, reverse=True) and peaks[0] > peaks[-1]


def _cost_flops(m, batch, seq):
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, "dcn_data": 1}),
                              jax.devices()[:1])
    opt = trainer.make_optimizer(config_lib.base_config().optimizer, m)
    abstract = trainer.abstract_state(m, opt, mesh)
    step = trainer.make_train_step(m, opt, lambda s: jnp.float32(1e-3))
    tokens = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)
    compiled = jax.jit(step).lower(abstract, tokens).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"]


@pytest.mark.parametrize("dims", [
    dict(vocab_size=2048, hidden_size=256, ffn_size=768, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64),
    dict(vocab_size=1024, hidden_size=384, ffn_size=1024, num_layers=3, num_heads=6, num_kv_heads=6, head_dim=64,
         tie_embeddings=True),
])
def test_analytic_train_flops_match_xla_cost_analysis(dims):
    # XLA's cost analysis counts a while-loop body once, so unroll the layer scan for the count.
    m = config_lib.model_config(**dims, scan_unroll=dims["num_layers"])
    batch, seq = 4, 128
    xla = _cost_flops(m, batch, seq)
    # XLA computes the full (unmasked) attention score matrix, so compare with the non-causal count.
    ours = flops.train_flops_per_token(m, seq, causal=False) * batch * seq
    assert abs(xla - ours) / ours < 0.15, (xla, ours)
