"""Activation-based importance of every prunable unit, from forward passes over calibration tokens.

No gradients (Minitron): one forward of the decoder's own math (decoder.rms_norm, apply_rope,
attention, dense) scanned over the stacked layers, recording per unit:

    hidden    [D]     a residual channel: |RMSNorm output| at every norm (2 per layer + the final one), summed
    heads     [L, H]  a query head: the L2 norm of what it writes into the residual stream, o_h @ o_proj[h]
    kv_groups [L, K]  a KV group: the sum of its query heads' scores (groups are kept or dropped whole)
    ffn       [L, F]  a neuron j: |silu(gate x)_j * (up x)_j| * ||down_proj[j]||, the norm of its write
    layers    [L]     a block: 1 - cos(input, output) of the residual stream through it

Aggregation (Minitron's best (batch=L2, seq=mean) variant): each per-token magnitude is averaged
over the positions of a sequence, then combined over sequences with an L2 norm,
score = sqrt(sum_b mean_t(a_bt)^2). `layers` is the plain mean of 1 - cos over all tokens.

Heads and neurons are scored by what they *write* (their activation times the norm of their slice
of the writer, o_proj or down_proj) rather than by the activation alone: a unit whose writer is 0
changes nothing, so it must rank lowest. That is what makes pruning back what growth added exact:
`zero` width growth gives new neurons and heads zero writers, identity depth growth zero blocks. 1 - cos is computed as |u - v|^2 / 2 of the unit vectors, which
equals it and has no cancellation for small angles; a token whose output is its input bitwise
counts exactly 0, so identity blocks score exactly 0 and rank strictly lowest.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrow import config as config_lib
from jaxgrow.model import decoder, losses


@dataclasses.dataclass(frozen=True)
class Importance:
    """Per-unit scores (float32 numpy, higher = more important), in the source's indexing."""

    hidden: np.ndarray     # [D]
    heads: np.ndarray      # [L, H]
    kv_groups: np.ndarray  # [L, K]
    ffn: np.ndarray        # [L, F]
    layers: np.ndarray     # [L]

    def __getitem__(self, name: str) -> np.ndarray:
        return getattr(self, name)


def _seq_mean(a: jax.Array) -> jax.Array:
    """[B, T, ...] magnitudes -> [B, ...] per-sequence means, in float32."""
    return jnp.mean(a.astype(jnp.float32), axis=1)


def _head_write_norms(o: jax.Array, o_proj: jax.Array) -> jax.Array:
    """[B, T, H]: |o_h @ o_proj[h]| per token and head, via the [H, d, d] Gram matrices of o_proj
    (D/d times cheaper than materialising every head's [D] write)."""
    w = o_proj.astype(jnp.float32)
    gram = jnp.einsum("hde,hfe->hdf", w, w)
    o32 = o.astype(jnp.float32)
    sq = jnp.einsum("bthd,hdf,bthf->bth", o32, gram, o32)
    return jnp.sqrt(jnp.maximum(sq, 0.0))  # rounding can make a zero write's square slightly negative


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)


def _block_with_stats(cfg: Any, rope: tuple, segment_ids: jax.Array | None, carry: tuple, layer: dict):
    """One decoder block (the math of decoder.Block, op for op) plus the statistics of its units."""
    x, hidden_acc = carry
    attn, mlp = layer["attn"], layer["mlp"]
    cos, sin = rope

    h = decoder.rms_norm(x, layer["attn_norm"]["scale"], cfg.norm_eps)
    hidden_acc = hidden_acc + _seq_mean(jnp.abs(h))
    q = decoder.apply_rope(decoder.dense(h, attn["q_proj"].astype(h.dtype)), cos, sin)
    k = decoder.apply_rope(decoder.dense(h, attn["k_proj"].astype(h.dtype)), cos, sin)
    v = decoder.dense(h, attn["v_proj"].astype(h.dtype))
    o = decoder.attention(q, k, v, cfg.attention_impl, segment_ids)
    heads = _seq_mean(_head_write_norms(o, attn["o_proj"]))                       # [B, H]
    y = x + decoder.dense(o, attn["o_proj"].astype(o.dtype), 2)

    h = decoder.rms_norm(y, layer["mlp_norm"]["scale"], cfg.norm_eps)
    hidden_acc = hidden_acc + _seq_mean(jnp.abs(h))
    gate = decoder.dense(h, mlp["gate_proj"].astype(h.dtype))
    up = decoder.dense(h, mlp["up_proj"].astype(h.dtype))
    act = jax.nn.silu(gate) * up
    out = y + decoder.dense(act, mlp["down_proj"].astype(act.dtype))
    down_norms = jnp.linalg.norm(mlp["down_proj"].astype(jnp.float32), axis=-1)  # [F]
    ffn = _seq_mean(jnp.abs(act)) * down_norms                                    # [B, F]

    change = 0.5 * jnp.sum(jnp.square(_unit(out) - _unit(x)), axis=-1)            # 1 - cos, [B, T]
    # An unchanged token has cos = 1 exactly; the two norms' reductions may round differently.
    change = jnp.where(jnp.all(out == x, axis=-1), 0.0, change)
    stats = {"heads": jnp.sum(heads * heads, 0), "ffn": jnp.sum(ffn * ffn, 0), "layers": jnp.sum(change)}
    return (out, hidden_acc), stats


def forward_with_stats(params: dict, cfg: Any, tokens: jax.Array, segment_ids: jax.Array | None = None):
    """(final residual stream [B, T, D], sums over this batch): squared per-sequence means for
    hidden/heads/ffn (L2 over sequences needs sums of squares), the summed 1 - cos for layers."""
    dtype = jnp.dtype(cfg.dtype)
    x = jnp.take(params["embed"]["embedding"].astype(dtype), tokens, axis=0)
    rope = decoder.rope_tables(tokens.shape[1], cfg.head_dim, cfg.rope_theta)
    hidden0 = jnp.zeros((tokens.shape[0], cfg.hidden_size), jnp.float32)
    body = functools.partial(_block_with_stats, cfg, rope, segment_ids)
    (x, hidden_acc), per_layer = jax.lax.scan(body, (x, hidden0), params["layers"])
    final = decoder.rms_norm(x, params["final_norm"]["scale"], cfg.norm_eps)
    hidden_acc = hidden_acc + _seq_mean(jnp.abs(final))
    return final, {"hidden": jnp.sum(hidden_acc * hidden_acc, 0), **per_layer}


@functools.lru_cache(maxsize=32)
def _stats_fn(cfg: Any, document_eos: int | None, out_sharding: Any):
    def stats(params, tokens):
        segments = None if document_eos is None else losses.segment_ids(tokens, document_eos)
        return forward_with_stats(params, cfg, tokens, segments)[1]

    return jax.jit(stats, out_shardings=out_sharding)


def _replicated_like(params: dict) -> Any:
    """Replicated outputs on the params' mesh, so every host can read the (small) scores."""
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return None


def importance(params: dict, cfg: Any, tokens: Any, *, document_eos: int | None = None,
               batch_size: int | None = None) -> Importance:
    """Scores every prunable unit of `params` (layout of cfg) on calibration tokens [B, T] (ints).

    document_eos: with an EOS id, packed documents do not attend to each other (as in training with
      data.document_masking). batch_size: sequences per forward pass (default: all of them); the
      scores do not depend on it (sums over sequences are accumulated across passes).
    """
    tokens = tokens if hasattr(tokens, "dtype") else np.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be an int array [batch, seq], got shape {np.shape(tokens)}")
    n = int(np.shape(tokens)[0])
    step = n if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    fn = _stats_fn(config_lib.frozen(cfg), document_eos, _replicated_like(params))
    totals: dict[str, np.ndarray] = {}
    for start in range(0, n, step):
        part = jax.device_get(fn(params, tokens[start:start + step]))
        totals = {k: totals.get(k, 0.0) + np.asarray(v, np.float64) for k, v in part.items()}
    heads = np.sqrt(totals["heads"])
    group = cfg.num_heads // cfg.num_kv_heads
    kv_groups = heads.reshape(cfg.num_layers, cfg.num_kv_heads, group).sum(-1)
    layers = totals["layers"] / (n * int(np.shape(tokens)[1]))
    as32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return Importance(hidden=as32(np.sqrt(totals["hidden"])), heads=as32(heads), kv_groups=as32(kv_groups),
                      ffn=as32(np.sqrt(totals["ffn"])), layers=as32(layers))
