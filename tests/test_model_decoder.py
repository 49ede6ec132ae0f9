"""Model: layout agreement, parameter counts, causality, GQA against an independent reference."""

import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrow import config as config_lib
from jaxgrow.family import checks
from jaxgrow.model import decoder, layout


CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def small(**kw):
    base = dict(vocab_size=101, hidden_size=48, ffn_size=80, num_layers=3, num_heads=6, num_kv_heads=2,
                head_dim=16, init_std=0.2)
    base.update(kw)
    return config_lib.model_config(**base)


@pytest.mark.parametrize("name", CONFIGS)
def test_param_count_of_every_shipped_config_matches_formula_and_layout(name):
    cfg = importlib.import_module(f"configs.{name}").get_config()
    for member in checks.validate(cfg):
        m = member.model
        abstract = jax.eval_shape(lambda: decoder.init_params(m, jax.random.key(0)))
        counted = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
        assert counted == layout.param_count(m)
        assert sum(int(np.prod(s.shape)) for s in layout.param_specs(m)) == layout.param_count(m)
        assert layout.non_embedding_param_count(m) == layout.param_count(m) - layout.embedding_param_count(m)


@pytest.mark.parametrize("tied", [False, True])
def test_init_params_follows_the_layout_exactly(tied):
    m = small(tie_embeddings=tied)
    params = decoder.init_params(m, jax.random.key(0))
    flat = {tuple(k.key for k in path): x for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    specs = {s.path: s for s in layout.param_specs(m)}
    assert set(flat) == set(specs)
    for path, x in flat.items():
        assert x.shape == specs[path].shape and x.dtype == jnp.float32
    assert ("lm_head", "kernel") not in flat if tied else ("lm_head", "kernel") in flat
    # layers are initialised independently
    q = params["layers"]["attn"]["q_proj"]
    assert not np.allclose(q[0], q[1])


def test_logits_shape_and_dtype():
    m = small()
    params = decoder.init_params(m, jax.random.key(0))
    out = decoder.logits(params, m, jnp.zeros((2, 7), jnp.int32))
    assert out.shape == (2, 7, 101) and out.dtype == jnp.float32


def test_causality_changing_token_t_never_changes_earlier_logits():
    m = small()
    params = decoder.init_params(m, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, m.vocab_size)
    base = decoder.logits(params, m, tokens)
    for t in (0, 5, 11):
        changed = tokens.at[:, t].set((tokens[:, t] + 7) % m.vocab_size)
        out = decoder.logits(params, m, changed)
        np.testing.assert_array_equal(np.asarray(out[:, :t]), np.asarray(base[:, :t]))
        assert not np.allclose(out[:, t], base[:, t])


def _reference_forward(params, m, tokens):
    """An independent Llama forward in numpy: explicit per-head loops, KV heads repeated per group."""
    p = jax.tree.map(np.asarray, params)
    x = p["embed"]["embedding"][np.asarray(tokens)].astype(np.float64)
    T, d = tokens.shape[1], m.head_dim
    inv = 1.0 / (m.rope_theta ** (np.arange(0, d, 2) / d))
    ang = np.arange(T)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def norm(h, g):
        return h / np.sqrt(np.mean(h * h, -1, keepdims=True) + m.norm_eps) * g

    def rope(v):  # [B, T, d]
        rot = np.concatenate([-v[..., d // 2:], v[..., :d // 2]], -1)
        return v * cos + rot * sin

    group = m.num_heads // m.num_kv_heads
    mask = np.tril(np.ones((T, T), bool))
    for layer in range(m.num_layers):
        L = jax.tree.map(lambda a: a[layer], p["layers"])
        h = norm(x, L["attn_norm"]["scale"])
        out = np.zeros_like(x)
        for head in range(m.num_heads):
            kv = head // group  # each KV head repeated for its query group
            q = rope(h @ L["attn"]["q_proj"][:, head])
            k = rope(h @ L["attn"]["k_proj"][:, kv])
            v = h @ L["attn"]["v_proj"][:, kv]
            s = np.einsum("btd,bsd->bts", q, k) / np.sqrt(d)
            s = np.where(mask, s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out += np.einsum("bts,bsd->btd", w, v) @ L["attn"]["o_proj"][head]
        x = x + out
        h = norm(x, L["mlp_norm"]["scale"])
        g = h @ L["mlp"]["gate_proj"]
        x = x + ((g / (1 + np.exp(-g))) * (h @ L["mlp"]["up_proj"])) @ L["mlp"]["down_proj"]
    x = norm(x, p["final_norm"]["scale"])
    head = p["embed"]["embedding"].T if m.tie_embeddings else p["lm_head"]["kernel"]
    return x @ head


@pytest.mark.parametrize("heads,kv,tied", [(6, 6, False), (6, 2, False), (6, 1, True), (4, 2, True)])
@pytest.mark.parametrize("impl", ["xla", "reference"])
def test_attention_matches_independent_reference_mha(heads, kv, tied, impl):
    m = small(num_heads=heads, num_kv_heads=kv, tie_embeddings=tied, attention_impl=impl)
    params = decoder.init_params(m, jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (2, 10), 0, m.vocab_size)
    ours = np.asarray(decoder.logits(params, m, tokens))
    ref = _reference_forward(params, m, tokens)
    assert np.abs(ref).max() > 1.0  # a meaningful comparison, not near-zero logits
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)


def test_dot_product_attention_equals_reference_attention():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 16, h, 32)) for i, h in enumerate((8, 2, 2)))
    fast = decoder.attention(q, k, v, "xla")
    ref = decoder.reference_attention(q, k, v)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), atol=1e-5)
    # bf16 path: fp32 softmax statistics keep it close to the fp32 reference
    fast16 = decoder.attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), "auto")
    np.testing.assert_allclose(np.asarray(fast16, np.float32), np.asarray(ref), atol=5e-2)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    m = small(dtype="bfloat16")
    params = decoder.init_params(m, jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, m.vocab_size)
    out16 = decoder.logits(params, m, tokens)
    out32 = decoder.logits(params, small(), tokens)
    assert out16.dtype == jnp.float32
    assert np.abs(np.asarray(out16) - np.asarray(out32)).max() < 0.1 * np.abs(np.asarray(out32)).max()


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_do_not_change_gradients(policy):
    m0, m1 = small(), small(remat_policy=policy)
    params = decoder.init_params(m0, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, m0.vocab_size)

    def loss(p, m):
        return jnp.mean(decoder.logits(p, m, tokens) ** 2)

    g0, g1 = jax.grad(loss)(params, m0), jax.grad(loss)(params, m1)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
