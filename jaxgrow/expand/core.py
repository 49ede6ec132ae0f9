"""Apply an expansion plan to a parameter pytree and to optimizer moments, guided by the layout.

Every parameter is handled by one generic rule that reads its axis roles from `layout.param_specs`:
gather each grown axis through its map, multiply by the map's per-position scale (`in_scale` where
the parameter reads the dimension, `out_scale` where it writes it, `gain_scale` on norm gains),
then fill fresh entries. For `zero`, a fresh entry is 0 when it would carry signal into the
residual stream (a residual writer's new output rows; a new internal unit's consumer weights),
and random (std of the existing entries) otherwise; fresh norm gains take the mean old gain.
Adam moments use the same gather but follow the *gradient's* scale (DESIGN.md §3; `grad_*` in
maps.py): `mu` is multiplied like the gradient, `nu` by its square, fresh entries and every entry of
an inserted identity layer start at 0. Where the map is exact (zero; tile; FPI/AKI/heads without
uneven residual copies) the mapped source gradient equals the gradient at the grown parameters, so
the carried moments are the ones the grown model would have accumulated (tests/test_expand.py).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrow.expand import maps as maps_lib
from jaxgrow.model import layout


INTERNAL_DIMS = ("mlp", "q_heads", "kv_heads")


def _bcast(vec: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = len(vec)
    return vec.reshape(shape)


def _zero_fill(method: str, dim: str, role: str) -> bool:
    """For `zero`: does a fresh entry on this (dim, role) have to be 0 to keep the function?"""
    return (dim == "embed" and role == "out") or (dim in INTERNAL_DIMS and role == "in")


def _width_axes(spec: layout.ParamSpec, plan: maps_lib.Plan):
    for axis, (dim, role) in enumerate(zip(spec.axes, spec.roles)):
        m = plan.dims.get(dim)
        if m is not None and role in ("in", "out", "gain") and not m.identity:
            yield axis, dim, role, m


def unit_uniform(key: jax.Array, shape: tuple) -> jax.Array:
    """Uniform(-sqrt 3, sqrt 3) values (mean 0, variance 1) from a counter-based hash.

    One pass over memory instead of threefry's 20 rounds per pair: the fresh entries of a large
    expansion are hundreds of millions of numbers, and weight initialisation needs no more than
    this. Each value depends only on (key, global element index), so it is the same under any
    sharding of the output (the iota is partitioned like the array).
    """
    seed = jax.random.bits(key, (), jnp.uint32)
    idx = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride & 0xFFFFFFFF)
        stride *= shape[axis]
    x = idx * jnp.uint32(0x9E3779B9) + seed
    for mult in (0x7FEB352D, 0x846CA68B):  # lowbias32 (C. Wellons), two rounds for a full avalanche
        x = x ^ (x >> 16)
        x = x * jnp.uint32(mult)
        x = x ^ (x >> 15)
    u = (x >> 8).astype(jnp.float32) * jnp.float32(2.0 ** -24)  # [0, 1)
    return (2.0 * u - 1.0) * jnp.float32(np.sqrt(3.0))


def _zero_sum_noise(key: jax.Array, shape: tuple, axis: int, m: maps_lib.DimMap) -> jax.Array:
    """Noise whose sum over the copies of each source index along `axis` is exactly 0."""
    r = unit_uniform(key, shape)
    old = m.old_size
    onehot = np.zeros((len(m.src), old), np.float32)
    onehot[np.arange(len(m.src)), m.src] = 1.0
    counts = onehot.sum(0)
    moved = jnp.moveaxis(r, axis, -1)
    mean = (moved @ onehot) / counts              # [..., old]: mean over each source's copies
    centred = moved - jnp.take(mean, m.src, axis=-1)
    return jnp.moveaxis(centred, -1, axis)


def transform(x: jax.Array, spec: layout.ParamSpec, plan: maps_lib.Plan, *, kind: str = "param",
              key: jax.Array | None = None, noise: float = 0.0) -> jax.Array:
    """Expands one array. kind: 'param', 'mu' (first moment) or 'nu' (second moment)."""
    x = jnp.asarray(x, jnp.float32)
    power = 2 if kind == "nu" else 1
    gradient_rule = kind in ("mu", "nu")
    axes = list(_width_axes(spec, plan))
    aki = plan.method == "bert2bert_aki" and spec.stacked and any(r == "out" for _, _, r, _ in axes)
    x_next = jnp.concatenate([x[1:], x[-1:]], axis=0) if aki else None
    std = jnp.std(x) if kind == "param" else None
    mean_gain = jnp.mean(x) if kind == "param" else None

    scale = np.ones([1] * x.ndim, np.float64)
    zero_mask = np.zeros([1] * x.ndim, bool)
    fresh_mask = np.zeros([1] * x.ndim, bool)
    dup_out = np.zeros([1] * x.ndim, bool)
    for axis, dim, role, m in axes:
        idx = np.maximum(m.src, 0)
        x = jnp.take(x, idx, axis=axis)
        if aki:
            x_next = jnp.take(x_next, idx, axis=axis)
        if gradient_rule:
            if role == "gain":
                vec = m.grad_gain_vec()
                if spec.path == ("final_norm", "scale"):
                    vec = vec / plan.final_gain_scale  # gain c·p => gradient g/c
            else:
                vec = m.grad_in if role == "in" else m.grad_out_vec()
        elif role == "gain":
            vec = np.full(len(m.src), m.gain_scale)
            if spec.path == ("final_norm", "scale"):
                vec = vec * plan.final_gain_scale
        else:
            vec = m.in_scale if role == "in" else m.out_scale
        scale = scale * _bcast(vec.astype(np.float64), axis, x.ndim) ** power
        fresh = _bcast(m.fresh, axis, x.ndim)
        fresh_mask = fresh_mask | fresh
        if plan.method == "zero" and _zero_fill(plan.method, dim, role):
            zero_mask = zero_mask | fresh
        if aki and role == "out":
            dup_out = dup_out | _bcast(m.dup, axis, x.ndim)

    scale32 = jnp.asarray(scale, jnp.float32)
    out = x * scale32
    if aki and dup_out.any():
        out = jnp.where(dup_out, x_next * scale32, out)
    if fresh_mask.any():
        if kind != "param":
            fill = jnp.zeros_like(out)
        elif "gain" in spec.roles:
            fill = jnp.broadcast_to(mean_gain * scale32, out.shape)
        else:
            fill = unit_uniform(key, out.shape) * std
        fill = jnp.where(zero_mask, 0.0, fill)
        out = jnp.where(fresh_mask, fill, out)

    if kind == "param" and noise > 0 and plan.method in maps_lib.COPY_METHODS:
        for i, (axis, _, role, m) in enumerate(axes):
            if role == "in" and m.dup.any():
                out = out + noise * std * _zero_sum_noise(jax.random.fold_in(key, 1000 + i), out.shape, axis, m)

    if spec.stacked and not plan.layers.identity:
        out = jnp.take(out, plan.layers.src, axis=0)
        if (spec.writes_residual or gradient_rule) and plan.layers.identity_new.any():
            # An inserted identity block: zero writers; its moments start at 0 (no history; at the
            # grown point its readers' gradient is exactly 0, since nothing flows through a zero writer).
            out = jnp.where(_bcast(plan.layers.identity_new, 0, out.ndim), 0.0, out)
    return out


def _source_leaf(tree: dict, spec: layout.ParamSpec, src_cfg: Any, plan: maps_lib.Plan):
    """The source array for a target param (the tied embedding's transpose for a new LM head)."""
    if spec.path == ("lm_head", "kernel") and plan.tie_to_untie:
        return jnp.asarray(layout.get_path(tree, ("embed", "embedding"))).T
    return layout.get_path(tree, spec.path)


def expand_tree(tree: dict, src_cfg: Any, dst_cfg: Any, plan: maps_lib.Plan, *, kind: str,
                key: jax.Array | None, noise: float) -> dict:
    """Applies `transform` to every leaf of a layout-shaped tree (params or one Adam moment)."""
    out: dict = {}
    for i, spec in enumerate(layout.param_specs(dst_cfg)):
        src_spec = layout.spec_by_path(src_cfg).get(spec.path)
        if src_spec is None and spec.path == ("lm_head", "kernel"):
            src_spec = spec  # roles are those of the LM head
        leaf_key = jax.random.fold_in(key, i) if key is not None else None
        value = transform(_source_leaf(tree, spec, src_cfg, plan), src_spec, plan, kind=kind, key=leaf_key, noise=noise)
        if value.shape != spec.shape:
            raise AssertionError(f"expansion produced {value.shape} for {spec.name}, layout says {spec.shape}")
        layout.set_path(out, spec.path, value)
    return out
