"""Pruning: exact removal of identity-grown blocks, target layout, bitwise untouched axes, moments, refusals,
sharding, and the importance scores' ranking."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgrow import config as config_lib, expand, prune
from jaxgrow.model import decoder, layout, sharding
from jaxgrow.prune import activations, core as prune_core
from jaxgrow.train import trainer


BASE = dict(vocab_size=61, hidden_size=24, ffn_size=40, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
            init_std=0.25)
TOKENS = jax.random.randint(jax.random.key(7), (3, 12), 0, 61)


def mc(**kw):
    return config_lib.model_config(**{**BASE, **kw})


def random_params(cfg, seed=0):
    """Init params with non-trivial norm gains, so gain selection is actually exercised."""
    params = decoder.init_params(cfg, jax.random.key(seed))
    for i, spec in enumerate(layout.param_specs(cfg)):
        if "gain" in spec.roles:
            g = layout.get_path(params, spec.path)
            gains = jax.random.uniform(jax.random.key(100 + i), g.shape, minval=0.5, maxval=1.5)
            layout.set_path(params, spec.path, g * gains)
    return params


def reference_prune(params, src_cfg, sel):
    """The pruning semantics in plain numpy, one parameter at a time (independent of core.py)."""
    out = {}
    for spec in layout.param_specs(src_cfg):
        a = np.asarray(layout.get_path(params, spec.path))
        if spec.stacked:
            a = a[sel.layers]
        for axis, name in enumerate(spec.axes):
            if name == "embed":
                a = np.take(a, sel.hidden, axis)
            for field in ("ffn", "heads", "kv_heads"):
                if name == prune.AXIS_OF[field]:
                    rows = getattr(sel, field)[sel.layers]
                    a = np.stack([np.take(a[i], rows[i], axis - 1) for i in range(len(rows))])
        layout.set_path(out, spec.path, a)
    return out


def assert_same_tree(got, want):
    chex.assert_trees_all_equal(jax.device_get(got), jax.device_get(want))  # bitwise


# --- 1. identity growth, pruned back by importance, is the parent exactly ------------------------------------------

@pytest.mark.parametrize("src,grown", [(dict(), dict(num_layers=5)),
                                       (dict(num_kv_heads=1, tie_embeddings=True), dict(num_layers=4))])
@pytest.mark.parametrize("position", ["interleave", "top"])
def test_identity_grown_layers_are_pruned_back_exactly_by_importance(src, grown, position):
    parent, big = mc(**src), mc(**{**src, **grown})
    params = random_params(parent)
    grown_params = expand.expand_params(params, parent, big, depth="identity", depth_position=position)
    scores = prune.importance(grown_params, big, TOKENS)
    inserted = expand.make_plan(parent, big, "zero", "identity", position).layers.identity_new
    assert np.all(scores.layers[inserted] == 0) and np.all(scores.layers[~inserted] > 1e-3), scores.layers

    pruned = prune.prune_params(grown_params, big, parent, scores=scores)
    assert_same_tree(pruned, params)
    np.testing.assert_allclose(decoder.logits(pruned, parent, TOKENS), decoder.logits(params, parent, TOKENS),
                               atol=1e-5, rtol=0)

    # and the moments the growth carried come back to the parent's
    opt_state = _adam_state(params, parent)
    grown_state = expand.expand_opt_state(opt_state, params, parent, big, depth_position=position)
    assert_same_tree(prune.prune_opt_state(grown_state, big, parent, scores=scores), opt_state)


@pytest.mark.parametrize("grown", [dict(ffn_size=77), dict(num_heads=8, num_kv_heads=4), dict(num_heads=8),
                                   dict(ffn_size=50, num_heads=6, num_kv_heads=3, num_layers=4)])
def test_zero_grown_units_are_pruned_back_exactly_by_importance(grown):
    # `zero` growth gives new FFN neurons and heads zero writers, so they score 0 and are exactly what pruning removes.
    parent, big = mc(), mc(**grown)
    params = random_params(parent)
    grown_params = expand.expand_params(params, parent, big, method="zero", key=jax.random.key(3))
    pruned = prune.prune_params(grown_params, big, parent, scores=prune.importance(grown_params, big, TOKENS))
    assert_same_tree(pruned, params)


# --- 2. same config ------------------------------------------------------------------------------------------------

def test_pruning_to_the_same_config_is_the_identity():
    cfg = mc()
    params = random_params(cfg)
    assert_same_tree(prune.prune_params(params, cfg, cfg), params)
    assert_same_tree(prune.prune_params(params, cfg, cfg, scores=prune.importance(params, cfg, TOKENS)), params)
    opt_state = _adam_state(params, cfg)
    assert_same_tree(prune.prune_opt_state(opt_state, cfg, cfg), opt_state)


# --- 3. exact target layout; untouched axes bitwise; the numpy reference ------------------------------------------

SHRINK_CASES = {
    "hidden": (dict(), dict(hidden_size=16)),
    "ffn": (dict(), dict(ffn_size=24)),
    "heads_mha": (dict(num_kv_heads=4), dict(num_heads=2, num_kv_heads=2)),
    "kv_groups_gqa": (dict(), dict(num_heads=2, num_kv_heads=1)),
    "heads_in_groups_gqa": (dict(num_heads=8), dict(num_heads=6)),
    "layers": (dict(num_layers=3), dict(num_layers=2)),
    "all": (dict(num_layers=3, num_heads=8), dict(hidden_size=16, ffn_size=24, num_heads=3, num_kv_heads=1,
                                                  num_layers=1)),
    "all_tied": (dict(tie_embeddings=True), dict(hidden_size=20, ffn_size=30, num_heads=2, num_kv_heads=1,
                                                 num_layers=1)),
}


@pytest.mark.parametrize("case", list(SHRINK_CASES))
def test_pruned_tree_has_exactly_the_target_layout(case):
    src_kw, dst_kw = SHRINK_CASES[case]
    src, dst = mc(**src_kw), mc(**{**src_kw, **dst_kw})
    params = random_params(src)
    scores = prune.importance(params, src, TOKENS)
    pruned = prune.prune_params(params, src, dst, scores=scores)

    target = jax.eval_shape(functools.partial(decoder.init_params, dst), jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(pruned, target)
    sel = prune.selection(src, dst, scores=scores)
    assert_same_tree(pruned, reference_prune(params, src, sel))
    shrunk = {prune.AXIS_OF[f] for f, k in (("hidden", "hidden_size"), ("ffn", "ffn_size"), ("heads", "num_heads"),
                                            ("kv_heads", "num_kv_heads"), ("layers", "num_layers")) if dst[k] < src[k]}
    for spec in layout.param_specs(dst):
        if not shrunk & set(spec.axes):
            assert_same_tree(layout.get_path(pruned, spec.path), layout.get_path(params, spec.path))
    assert np.isfinite(np.asarray(decoder.logits(pruned, dst, TOKENS))).all()


def _silenced(params, cfg, sel):
    """The source with every removed unit's writer zeroed: the function a non-width pruning must keep."""
    out = jax.tree.map(np.array, params)
    kept_layers = np.isin(np.arange(cfg.num_layers), sel.layers)
    for l in range(cfg.num_layers):
        o_proj, down = out["layers"]["attn"]["o_proj"][l], out["layers"]["mlp"]["down_proj"][l]
        if not kept_layers[l]:
            o_proj[:], down[:] = 0, 0
        o_proj[~np.isin(np.arange(cfg.num_heads), sel.heads[l])] = 0
        down[~np.isin(np.arange(cfg.ffn_size), sel.ffn[l])] = 0
    return out


@pytest.mark.parametrize("dst_kw", [dict(ffn_size=24), dict(num_heads=2), dict(num_heads=2, num_kv_heads=1),
                                    dict(num_layers=2), dict(ffn_size=10, num_heads=2, num_kv_heads=1, num_layers=1)])
def test_pruning_units_equals_silencing_them(dst_kw):
    # Removing FFN neurons, heads, KV groups or blocks is exact: the pruned model computes what the source computes
    # with those units' residual writers zeroed (only hidden-channel pruning renormalises).
    src = mc(num_layers=3)
    dst = mc(**{"num_layers": 3, **dst_kw})
    params = random_params(src)
    sel = prune.selection(src, dst, scores=prune.importance(params, src, TOKENS))
    pruned = prune.prune_params(params, src, dst, keep=sel)
    silenced = decoder.logits(_silenced(params, src, sel), src, TOKENS)
    np.testing.assert_allclose(decoder.logits(pruned, dst, TOKENS), silenced, atol=2e-5, rtol=0)


def test_explicit_keep_is_sorted_per_source_layer_and_validated_against_scores():
    src = mc(num_layers=3, num_heads=8)
    dst = mc(hidden_size=16, ffn_size=24, num_heads=4, num_kv_heads=2, num_layers=2)
    params = random_params(src)
    rng = np.random.default_rng(0)
    ffn_rows = np.stack([rng.permutation(40)[:24] for _ in range(3)])  # unsorted on purpose
    keep = {"hidden": rng.permutation(24)[:16], "layers": [2, 0], "ffn": ffn_rows,
            "heads": [[0, 1, 4, 5], [2, 3, 6, 7], [0, 3, 5, 6]]}
    sel = prune.selection(src, dst, keep=keep)
    np.testing.assert_array_equal(sel.layers, [0, 2])
    np.testing.assert_array_equal(sel.ffn, np.sort(ffn_rows, 1))
    np.testing.assert_array_equal(sel.kv_heads, [[0, 1]] * 3)
    pruned = prune.prune_params(params, src, dst, keep=keep)
    assert_same_tree(pruned, reference_prune(params, src, sel))
    # kept layer 1 of the target is source layer 2: its FFN columns come from row 2 of keep["ffn"]
    np.testing.assert_array_equal(pruned["layers"]["mlp"]["up_proj"][1],
                                  np.asarray(params["layers"]["mlp"]["up_proj"])[2][np.ix_(sel.hidden, sel.ffn[2])])
    assert_same_tree(prune.prune_params(params, src, dst, keep=sel), pruned)  # a Selection is a valid keep


def test_the_per_axis_formulation_is_bitwise_the_single_gather(monkeypatch):
    # Under a mesh (or for a leaf beyond int32 positions) pruning takes one axis at a time instead of one gather.
    src = mc(num_layers=3, num_heads=8)
    dst = mc(hidden_size=16, ffn_size=24, num_heads=6, num_kv_heads=2, num_layers=2)
    params = random_params(src)
    sel = prune.selection(src, dst, scores=prune.importance(params, src, TOKENS))
    assert len({r.tobytes() for r in sel.ffn[sel.layers]}) == 2  # per-layer rows differ: the batched take runs
    one_gather = jax.jit(lambda t: prune_core.prune_tree(t, src, dst, sel))(params)
    monkeypatch.setattr(prune_core, "_INT32_MAX", 0)
    per_axis = jax.jit(lambda t: prune_core.prune_tree(t, src, dst, sel))(params)
    assert_same_tree(per_axis, one_gather)
    assert_same_tree(per_axis, reference_prune(params, src, sel))


def test_scores_keep_whole_groups_and_the_best_heads_inside_them():
    src, dst = mc(num_heads=8, num_kv_heads=2, num_layers=1), mc(num_heads=2, num_kv_heads=1, num_layers=1)
    heads = np.array([[5., 1, 2, 3, 1, 9, 1, 1]])  # group 0 sums to 11, group 1 to 12
    scores = {"heads": heads, "kv_groups": heads.reshape(1, 2, 4).sum(-1)}
    sel = prune.selection(src, dst, scores=scores)
    np.testing.assert_array_equal(sel.kv_heads, [[1]])
    np.testing.assert_array_equal(sel.heads, [[4, 5]])  # head 5 (9), then the earliest of the tied 4, 6, 7


def test_a_larger_target_group_keeps_the_best_group_whole_and_fills_it_from_the_others():
    """4 heads / 2 KV -> 3 heads / 1 KV (family_tiny's large -> medium): the best group keeps both its heads, the
    third head is the best of the dropped group; an explicit keep cannot merge groups and is refused."""
    src, dst = mc(num_heads=4, num_kv_heads=2, num_layers=1), mc(num_heads=3, num_kv_heads=1, num_layers=1)
    heads = np.array([[1., 4, 3, 3]])  # group 0 sums to 5, group 1 to 6; head 1 is the best of the dropped group 0
    sel = prune.selection(src, dst, scores={"heads": heads, "kv_groups": heads.reshape(1, 2, 2).sum(-1)})
    np.testing.assert_array_equal(sel.kv_heads, [[1]])
    np.testing.assert_array_equal(sel.heads, [[1, 2, 3]])
    pruned = prune.prune_params(random_params(src), src, dst, keep=sel)
    chex.assert_trees_all_equal_shapes_and_dtypes(pruned, jax.eval_shape(lambda k: decoder.init_params(dst, k),
                                                                           jax.random.key(0)))
    with pytest.raises(ValueError, match=r"keep\['heads'\]: dst_cfg.num_heads=3 with dst_cfg.num_kv_heads=1 needs 3"):
        prune.selection(src, dst, keep={"heads": [1, 2, 3], "kv_heads": [1]})


# --- 4. Adam moments follow the params' selection ------------------------------------------------------------------

def _adam_state(params, cfg):
    """The trainer's optimizer state after one update: mu and nu non-trivial."""
    opt = trainer.make_optimizer(config_lib.base_config().optimizer, cfg)
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(x.size), x.shape), params)
    _, state = opt.update(grads, opt.init(params), params)
    return state


def test_moments_are_selected_with_the_params_indices_and_train():
    src = mc(num_layers=3, num_heads=8)
    dst = mc(hidden_size=16, ffn_size=24, num_heads=3, num_kv_heads=1, num_layers=2)
    params = random_params(src)
    scores = prune.importance(params, src, TOKENS)
    sel = prune.selection(src, dst, scores=scores)
    opt_state = _adam_state(params, src)
    pruned_state = prune.prune_opt_state(opt_state, src, dst, scores=scores)
    pruned_params = prune.prune_params(params, src, dst, keep=sel)

    dst_opt = trainer.make_optimizer(config_lib.base_config().optimizer, dst)
    chex.assert_trees_all_equal_shapes_and_dtypes(pruned_state, dst_opt.init(pruned_params))
    adam, pruned_adam = opt_state[1], pruned_state[1]
    assert float(jnp.abs(adam.nu["layers"]["mlp"]["down_proj"]).min()) > 0  # every entry carries history
    assert_same_tree(pruned_adam.mu, reference_prune(adam.mu, src, sel))
    assert_same_tree(pruned_adam.nu, reference_prune(adam.nu, src, sel))
    assert int(pruned_adam.count) == int(adam.count) == 1

    state = trainer.new_state(pruned_params, pruned_state)
    step = jax.jit(trainer.make_train_step(dst, dst_opt, lambda s: jnp.float32(1e-3)))
    _, metrics = step(state, jax.random.randint(jax.random.key(5), (4, 13), 0, 61))
    assert bool(metrics["finite"])


# --- 5. refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("src,dst,field", [
    (dict(), dict(hidden_size=32), "dst_cfg.hidden_size=32 grows from 24; pruning only shrinks"),
    (dict(), dict(ffn_size=41), "dst_cfg.ffn_size=41 grows from 40"),
    (dict(), dict(num_layers=3), "dst_cfg.num_layers=3 grows from 2"),
    (dict(), dict(num_heads=8), "dst_cfg.num_heads=8 grows from 4"),
    (dict(), dict(num_kv_heads=4), "dst_cfg.num_kv_heads=4 grows from 2"),
    (dict(), dict(ffn_size=0), "dst_cfg.ffn_size=0 must be >= 1"),
    (dict(), dict(head_dim=4), "dst_cfg.head_dim=4 must equal src_cfg.head_dim=8"),
    (dict(), dict(vocab_size=60), "dst_cfg.vocab_size=60 must equal src_cfg.vocab_size=61"),
    (dict(), dict(num_heads=3), "dst_cfg.num_heads=3 must be divisible by dst_cfg.num_kv_heads=2"),
    (dict(), dict(tie_embeddings=True), "dst_cfg.tie_embeddings=True must equal src_cfg.tie_embeddings=False"),
])
def test_invalid_targets_raise_value_error_naming_the_field(src, dst, field):
    s, d = mc(**src), mc(**{**src, **dst})
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        prune.check(s, d)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        prune.prune_params(random_params(s), s, d, keep={})


@pytest.mark.parametrize("dst,keep,field", [
    (dict(hidden_size=2), {"hidden": [0, 24]}, r"keep\['hidden'\] index 24 is out of range \[0, 24\)"),
    (dict(hidden_size=2), {"hidden": [-1, 3]}, r"keep\['hidden'\] index -1 is out of range"),
    (dict(ffn_size=3), {"ffn": [1, 5, 5]}, r"keep\['ffn'\] repeats indices \[5\]"),
    (dict(num_layers=1), {"layers": [0, 1]}, r"keep\['layers'\] has 2 indices per row; dst_cfg\.num_layers=1 needs 1"),
    (dict(ffn_size=2), {"ffn": np.zeros((3, 2), int)}, r"keep\['ffn'\] must be \[2\] or \[src_cfg\.num_layers=2, 2\]"),
    (dict(ffn_size=2), {"ffn": [0.0, 1.0]}, r"keep\['ffn'\] must hold integer indices"),
    (dict(num_heads=2, num_kv_heads=1), {"heads": [0, 2]}, r"keep\['heads'\] row 0 takes \[1, 1\] query heads"),
    (dict(num_heads=2, num_kv_heads=1), {"heads": [2, 3], "kv_heads": [0]}, r"keep\['kv_heads'\] disagrees"),
    (dict(), {"neurons": [1]}, r"keep has unknown fields \['neurons'\]"),
    (dict(ffn_size=24), {}, r"dst_cfg\.ffn_size=24 shrinks from 40 but neither keep\['ffn'\] nor scores"),
    (dict(num_heads=2), {"kv_heads": [0, 1]}, r"dst_cfg\.num_heads=2 shrinks from 4 but neither keep\['heads'\]"),
])
def test_invalid_keep_raises_value_error_naming_the_field(dst, keep, field):
    src = mc()
    with pytest.raises(ValueError, match=field):
        prune.prune_params(random_params(src), src, mc(**dst), keep=keep)


def test_scores_of_another_model_are_refused():
    src = mc()
    scores = prune.importance(random_params(src), src, TOKENS)
    with pytest.raises(ValueError, match=r"scores\.ffn has shape \(2, 40\); the source config needs \(3, 40\)"):
        prune.selection(mc(num_layers=3), mc(num_layers=3, ffn_size=8), scores=scores)


# --- 6. jittable with the target's shardings -----------------------------------------------------------------------

def test_sharded_pruning_with_out_shardings_on_8_devices(devices8):
    src = mc(hidden_size=32, ffn_size=48, num_layers=3)
    dst = mc(hidden_size=16, ffn_size=24, num_heads=2, num_kv_heads=1, num_layers=2)
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 4, "tensor": 2, "dcn_data": 1}), devices8)
    host_params = random_params(src)
    params = jax.device_put(host_params, sharding.param_shardings(src, mesh))
    with jax.set_mesh(mesh):
        scores = prune.importance(params, src, TOKENS)
    np.testing.assert_allclose(scores.ffn, prune.importance(host_params, src, TOKENS).ffn, rtol=1e-4)
    sel = prune.selection(src, dst, scores=scores)

    fn = jax.jit(functools.partial(prune.prune_params, src_cfg=src, dst_cfg=dst, keep=sel),
                 out_shardings=sharding.param_shardings(dst, mesh))
    with jax.set_mesh(mesh):
        out = fn(params)
    for spec in layout.param_specs(dst):
        x = layout.get_path(out, spec.path)
        assert x.sharding.spec == sharding.logical_to_spec(spec.axes, spec.shape, dict(mesh.shape)), spec.name
    assert out["layers"]["mlp"]["up_proj"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert_same_tree(out, prune.prune_params(host_params, src, dst, keep=sel))

    host_state = _adam_state(host_params, src)
    opt_state = jax.device_put(host_state, sharding.tree_shardings(host_state, src, mesh))
    prune_state = functools.partial(prune.prune_opt_state, src_cfg=src, dst_cfg=dst, keep=sel)
    target = sharding.tree_shardings(jax.eval_shape(prune_state, opt_state), dst, mesh)
    with jax.set_mesh(mesh):
        state = jax.jit(prune_state, out_shardings=target)(opt_state)
    q_spec = jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert state[1].mu["layers"]["attn"]["q_proj"].sharding.spec == q_spec
    assert_same_tree(state, prune_state(jax.device_get(opt_state)))


# --- 7. importance ranks what it should ----------------------------------------------------------------------------

def test_importance_ranks_silenced_and_amplified_units():
    cfg = mc(num_layers=2, num_heads=8)
    params = jax.tree.map(np.array, random_params(cfg))
    attn, mlp = params["layers"]["attn"], params["layers"]["mlp"]
    mlp["gate_proj"][1, :, 5] = 0        # neuron 5 of layer 1: silu(0) * up = 0
    mlp["down_proj"][0, 7, :] = 0        # neuron 7 of layer 0 writes nothing
    attn["o_proj"][0, 2] *= 10           # head 2 of layer 0 writes 10x louder
    attn["o_proj"][1, 6] = 0             # head 6 of layer 1 writes nothing
    for norm in ("attn_norm", "mlp_norm"):
        params["layers"][norm]["scale"][:, 3] = 0  # channel 3 is zero after every norm
    params["final_norm"]["scale"][3] = 0
    s = prune.importance(params, cfg, TOKENS)

    assert s.ffn[1, 5] == 0 and s.ffn[0, 7] == 0 and s.ffn[1].argmin() == 5 and s.ffn[0].argmin() == 7
    assert s.heads[0].argmax() == 2 and s.kv_groups[0].argmax() == 2 // 4
    assert s.heads[1, 6] == 0 and s.heads[1].argmin() == 6
    np.testing.assert_allclose(s.kv_groups, s.heads.reshape(2, 2, 4).sum(-1), rtol=1e-6)
    assert s.hidden[3] == 0 and s.hidden.argmin() == 3
    assert (s.layers > 0).all() and (s.hidden >= 0).all()


def test_importance_does_not_depend_on_the_pass_batch_size_and_sees_documents():
    cfg = mc()
    params = random_params(cfg)
    whole = prune.importance(params, cfg, TOKENS)
    chunked = prune.importance(params, cfg, TOKENS, batch_size=2)
    for name in ("hidden", "heads", "kv_groups", "ffn", "layers"):
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-5, err_msg=name)
    masked = prune.importance(params, cfg, TOKENS, document_eos=int(TOKENS[0, 4]))
    assert not np.allclose(masked.heads, whole.heads)  # documents do not attend to each other


def test_importance_forward_is_the_decoder():
    # The importance pass re-implements the block with decoder's own pieces; it must not drift from the decoder.
    for cfg in (mc(), mc(tie_embeddings=True, num_kv_heads=1)):
        params = random_params(cfg)
        final, _ = activations.forward_with_stats(params, cfg, TOKENS)
        head = params["embed"]["embedding"].T if cfg.tie_embeddings else params["lm_head"]["kernel"]
        np.testing.assert_allclose(final @ head, decoder.logits(params, cfg, TOKENS), atol=1e-5, rtol=0)
