"""Apply a `Selection` to a layout-shaped tree (parameters or one Adam moment), guided by the layout.

One generic rule for every parameter: for each axis of its `layout.param_specs` entry whose logical
name a pruned field selects on (embed, mlp, q_heads, kv_heads, layers), gather the kept indices.
Nothing is scaled, so a kept entry is bitwise the source's, an axis that does not shrink is never
touched, and a new parameter in the layout needs no change here. Moments use the very same gather:
pruning removes units, it does not rescale the ones it keeps.

Two equivalent formulations of the gather (bitwise the same result; tests/test_prune.py checks both):
  one gather  (no mesh): a single gather over all axes up to the last pruned one, indexed by the
              row-major position of each kept element. It writes the output in order in one pass.
              A chain of per-axis takes is ~5x a plain copy on XLA:CPU in a many-output program
              (a gather on a minor axis gets a transposed layout plus a copy), and numpy-style
              coordinate tuples ~2.5x (their concatenated index is materialised when two leaves share it).
  per axis    (under a mesh, `jax.set_mesh`, or a leaf of over 2^31 leading elements): one take per
              pruned axis. GSPMD partitions a take along one axis and keeps the other axes' sharding;
              the single gather over flattened axes would first replicate the whole source leaf on
              every device.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrow.model import layout
from jaxgrow.prune.select import Selection


# Sorted, unique and in range by construction (select.py): tell XLA, so it needs no bounds masking.
_GATHER = dict(mode="promise_in_bounds", unique_indices=True, indices_are_sorted=True)
# Index terms are summed on the host while their broadcast stays this small (fewer loads per element).
_HOST_FOLD_ELEMENTS = 1 << 20
_INT32_MAX = int(np.iinfo(np.int32).max)


def _picked(spec: layout.ParamSpec, sel: Selection) -> dict[int, np.ndarray]:
    """axis -> kept indices ([n], or [L', n] rows of the kept layers) for every pruned axis."""
    picked = {axis: sel.indices_for_axis(name) for axis, name in enumerate(spec.axes)}
    for axis, idx in picked.items():
        if idx is not None and idx.ndim == 2 and not (spec.stacked and axis > 0):
            raise AssertionError(f"{spec.name}: per-layer indices on {spec.axes[axis]!r} of an unstacked param")
    return {axis: idx for axis, idx in picked.items() if idx is not None}


def _coordinates(picked: dict[int, np.ndarray], shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Broadcastable index arrays for axes 0..m (m: the last pruned axis), numpy-style: an axis that is
    not pruned gets arange, per-layer rows are aligned with the layer axis 0."""
    ndim = max(picked) + 1
    coords = []
    for axis in range(ndim):
        idx = picked.get(axis, np.arange(shape[axis]))
        view = [1] * ndim
        view[axis] = idx.shape[-1]
        if idx.ndim == 2:  # row l belongs to (kept) layer l
            view[0] = idx.shape[0]
        coords.append(idx.reshape(view))
    return tuple(coords)


def _row_major_index(coords: tuple[np.ndarray, ...], lead: tuple[int, ...]) -> jax.Array:
    """The row-major position of every kept element in the leading axes `lead`, as broadcast int32
    sums of per-axis terms (elementwise, so XLA fuses it into each gather; never a full-size constant)."""
    strides = [math.prod(lead[axis + 1:]) for axis in range(len(lead))]
    terms = sorted((c.astype(np.int64) * stride for c, stride in zip(coords, strides)), key=lambda t: t.size)
    host, device = terms[0], []
    for term in terms[1:]:
        if math.prod(np.broadcast_shapes(host.shape, term.shape)) <= _HOST_FOLD_ELEMENTS:
            host = host + term
        else:
            device.append(term)
    index = jnp.asarray(host.astype(np.int32))
    for term in device:
        index = index + jnp.asarray(term.astype(np.int32))
    return index


def _one_gather(x: jax.Array, picked: dict[int, np.ndarray]) -> jax.Array:
    coords = _coordinates(picked, x.shape)
    lead = x.shape[:len(coords)]
    flat = x.reshape(math.prod(lead), *x.shape[len(coords):])
    return flat.at[_row_major_index(coords, lead)].get(**_GATHER)


def _per_axis(x: jax.Array, picked: dict[int, np.ndarray]) -> jax.Array:
    def take(array: jax.Array, idx: np.ndarray, axis: int) -> jax.Array:
        return array.at[(slice(None),) * axis + (idx,)].get(**_GATHER)

    # Layers first: later takes then read only the kept layers, and per-layer rows are per kept layer.
    for axis in sorted(picked):
        idx = picked[axis]
        if idx.ndim == 1:
            x = take(x, idx, axis)
        else:  # row l of idx gathers layer l's axis (one batched gather)
            x = jax.vmap(lambda layer, rows, a=axis: take(layer, rows, a - 1))(x, idx)
    return x


def select_leaf(x: jax.Array, spec: layout.ParamSpec, sel: Selection) -> jax.Array:
    """Gathers the kept indices on every pruned axis of one source array (see the module docstring)."""
    picked = _picked(spec, sel)
    if not picked:
        return x  # nothing pruned: the very same values, bitwise
    lead_elements = math.prod(x.shape[:max(picked) + 1])
    if jax.sharding.get_abstract_mesh().empty and lead_elements <= _INT32_MAX:
        return _one_gather(x, picked)
    return _per_axis(x, picked)


def prune_tree(tree: dict, src_cfg: Any, dst_cfg: Any, sel: Selection) -> dict:
    """A tree in dst_cfg's layout from one in src_cfg's (params, or one Adam moment)."""
    src_specs = layout.spec_by_path(src_cfg)
    out: dict = {}
    for spec in layout.param_specs(dst_cfg):
        value = select_leaf(layout.get_path(tree, spec.path), src_specs[spec.path], sel)
        if value.shape != spec.shape:
            raise AssertionError(f"pruning produced {value.shape} for {spec.name}, layout says {spec.shape}")
        layout.set_path(out, spec.path, value)
    return out
