"""Llama-style decoder-only transformer in Flax (linen), with block params stacked and scanned.

Public API (stable):
    init_params(model_cfg, key) -> params   a plain nested dict of float32 arrays (layout.py)
    logits(params, model_cfg, tokens) -> [batch, seq, vocab] float32

Parameters are declared from `layout.param_specs`; the modules below only *read* that declaration,
so the model, sharding, expansion and export can never disagree on a shape. Compute runs in
`model_cfg.dtype` (float32 or bfloat16); RMSNorm statistics, softmax and logits are float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgrow import config as config_lib
from jaxgrow.model import layout, sharding


_REMAT = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


_frozen = config_lib.frozen


def _initializer(spec: layout.ParamSpec):
    if spec.init == "ones":
        return nn.initializers.ones
    if spec.init == "zeros":
        return nn.initializers.zeros
    return nn.initializers.normal(stddev=spec.std)


class _Params(nn.Module):
    """Declares the parameters of one layout group (e.g. layers/attn) and returns them as a dict.

    Inside the layer scan the leading `layers` axis is added by nn.scan, so stacked specs are
    declared per layer (shape[1:]).
    """

    specs: tuple

    @nn.compact
    def __call__(self) -> dict:
        out = {}
        for spec in self.specs:
            shape = spec.shape[1:] if spec.stacked else spec.shape
            out[spec.path[-1]] = self.param(spec.path[-1], _initializer(spec), shape, jnp.float32)
        return out


def _group(cfg, *prefix: str) -> tuple:
    n = len(prefix)
    return tuple(s for s in layout.param_specs(cfg) if s.path[:n] == prefix and len(s.path) == n + 1)


# ----------------------------------------------------------------------------------------------
# Pure math (shared by the Flax modules and the tests' reference implementations)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x: [..., D] in the compute dtype; statistics in float32; returns x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * scale).astype(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin: [seq, head_dim] float32, in the Hugging Face Llama (rotate-half) convention."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    freqs = np.outer(np.arange(seq_len, dtype=np.float32), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return jnp.asarray(np.cos(emb)), jnp.asarray(np.sin(emb))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [batch, seq, heads, head_dim]; rotation computed in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return out.astype(x.dtype)


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """Causal GQA by explicit einsums. q: [B,T,H,d]; k, v: [B,T,K,d] -> [B,T,H,d]. With segment_ids
    [B,T], a position attends only to positions of its own segment (document masking)."""
    B, T, H, d = q.shape
    K = k.shape[2]
    qg = q.reshape(B, T, K, H // K, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) / np.sqrt(d)
    mask = np.tril(np.ones((T, T), dtype=bool))
    if segment_ids is not None:
        mask = mask & (segment_ids[:, None, None, :, None] == segment_ids[:, None, None, None, :])
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(B, T, H, d)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str, segment_ids: jax.Array | None = None) -> jax.Array:
    """Causal attention with the configured implementation (see config.ATTENTION_IMPLS)."""
    if impl == "reference":
        return reference_attention(q, k, v, segment_ids)
    if segment_ids is not None:  # document masking: causal AND same segment, as an explicit mask
        same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
        return jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True,
                                            implementation=None if impl == "auto" else "xla")
    if impl == "auto":
        impl = "cudnn" if (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)) else "xla"
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)


def _flatten(x: jax.Array, w: jax.Array, n_in: int) -> tuple[jax.Array, jax.Array]:
    """x [..., *in] -> [tokens, prod(in)]; w [*in, *out] -> [prod(in), prod(out)]."""
    k = int(np.prod(w.shape[:n_in]))
    return x.reshape(-1, k), w.reshape(k, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dense(x: jax.Array, w: jax.Array, n_in: int = 1, out_dtype=None) -> jax.Array:
    """Contracts the last `n_in` dims of x with the first `n_in` dims of w (every projection here).

    Same math as an einsum; the custom backward computes the weight gradient as x^T @ dy with the
    transpose on the (smaller) input side. Profile-guided: XLA:CPU otherwise transposes the output
    gradient inside a fused elementwise loop, which made the backward ~2x slower.
    """
    x2, w2 = _flatten(x, w, n_in)
    y = jnp.dot(x2, w2, preferred_element_type=out_dtype)
    return y.reshape(*x.shape[:x.ndim - n_in], *w.shape[n_in:])


def _dense_fwd(x, w, n_in, out_dtype):
    return dense(x, w, n_in, out_dtype), (x, w)


def _dense_bwd(n_in, out_dtype, res, g):
    x, w = res
    x2, w2 = _flatten(x, w, n_in)
    g2 = g.reshape(x2.shape[0], w2.shape[1]).astype(x.dtype)
    dx = jnp.dot(g2, w2.T).reshape(x.shape)
    dw = jnp.dot(x2.T, g2).reshape(w.shape)
    return dx, dw


dense.defvjp(_dense_fwd, _dense_bwd)


# ----------------------------------------------------------------------------------------------
# Flax modules


class Block(nn.Module):
    """One pre-norm block: h += Attn(RMSNorm(h)); h += SwiGLU(RMSNorm(h)). Scanned over layers."""

    cfg: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], segment_ids: jax.Array | None = None):
        cfg = self.cfg
        attn_norm = _Params(_group(cfg, "layers", "attn_norm"), name="attn_norm")()
        attn = _Params(_group(cfg, "layers", "attn"), name="attn")()
        mlp_norm = _Params(_group(cfg, "layers", "mlp_norm"), name="mlp_norm")()
        mlp = _Params(_group(cfg, "layers", "mlp"), name="mlp")()
        cos, sin = rope

        h = rms_norm(x, attn_norm["scale"], cfg.norm_eps)
        q = apply_rope(dense(h, attn["q_proj"].astype(h.dtype)), cos, sin)
        k = apply_rope(dense(h, attn["k_proj"].astype(h.dtype)), cos, sin)
        v = dense(h, attn["v_proj"].astype(h.dtype))
        q = sharding.constrain(q, ("batch", "length", "activation_heads", "head_dim"))
        o = attention(q, k, v, cfg.attention_impl, segment_ids)
        x = x + dense(o, attn["o_proj"].astype(o.dtype), 2)
        x = sharding.constrain(x, ("batch", "length", "activation_embed"))

        h = rms_norm(x, mlp_norm["scale"], cfg.norm_eps)
        gate = dense(h, mlp["gate_proj"].astype(h.dtype))
        up = dense(h, mlp["up_proj"].astype(h.dtype))
        act = sharding.constrain(jax.nn.silu(gate) * up, ("batch", "length", "activation_mlp"))
        x = x + dense(act, mlp["down_proj"].astype(act.dtype))
        x = sharding.constrain(x, ("batch", "length", "activation_embed"))
        return x, None


class Decoder(nn.Module):
    cfg: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, tokens: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        embedding = _Params(_group(cfg, "embed"), name="embed")()["embedding"]
        table = sharding.constrain(embedding.astype(dtype), ("activation_vocab", "activation_embed"))
        x = jnp.take(table, tokens, axis=0)
        x = sharding.constrain(x, ("batch", "length", "activation_embed"))

        block = Block
        if cfg.remat_policy != "none":
            block = nn.remat(Block, policy=_REMAT[cfg.remat_policy], prevent_cse=False)
        stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                        unroll=min(cfg.get("scan_unroll", 1), cfg.num_layers))
        x, _ = stack(cfg, name="layers")(x, rope_tables(tokens.shape[1], cfg.head_dim, cfg.rope_theta), segment_ids)

        x = rms_norm(x, _Params(_group(cfg, "final_norm"), name="final_norm")()["scale"], cfg.norm_eps)
        head = embedding.T if cfg.tie_embeddings else _Params(_group(cfg, "lm_head"), name="lm_head")()["kernel"]
        out = dense(x, head.astype(dtype), 1, jnp.float32)
        return sharding.constrain(out, ("batch", "length", "activation_vocab"))


@functools.lru_cache(maxsize=64)
def _module(cfg: ml_collections.FrozenConfigDict) -> Decoder:
    return Decoder(cfg)


@functools.lru_cache(maxsize=64)
def _init_fn(cfg: ml_collections.FrozenConfigDict):
    def init(key):
        variables = _module(cfg).init(key, jnp.zeros((1, 1), jnp.int32))
        return jax.tree.map(lambda x: x, nn.unbox(variables["params"]))  # plain dicts, no FrozenDict

    return jax.jit(init)  # one compilation instead of many eager ops; inlines under an outer jit


def init_params(model_cfg: Any, key: jax.Array) -> dict:
    """Fresh float32 parameters: a plain nested dict in the layout of `layout.param_specs`."""
    return _init_fn(_frozen(model_cfg))(key)


@functools.lru_cache(maxsize=64)
def _logits_fn(cfg: ml_collections.FrozenConfigDict):
    return jax.jit(lambda params, tokens, segment_ids=None: _module(cfg).apply({"params": params}, tokens, segment_ids))


def logits(params: dict, model_cfg: Any, tokens: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """tokens: [batch, seq] int32 -> next-token logits [batch, seq, vocab] float32. segment_ids
    [batch, seq] (optional): attention stays within equal ids (document masking)."""
    return _logits_fn(_frozen(model_cfg))(params, tokens, segment_ids)
