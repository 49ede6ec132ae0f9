"""Device mesh from config, logical-axis -> mesh-axis resolution, NamedShardings for layout trees.

The rules live in `layout.LOGICAL_AXIS_RULES` (one table). A dimension is sharded over its mesh
axes only when its size is divisible by their product; otherwise it is replicated, so e.g. MQA's
single KV head simply stays whole under tensor parallelism.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxgrow.config import InputError
from jaxgrow.model import layout


MESH_AXES = ("data", "fsdp", "tensor")


class MeshError(InputError):
    """The mesh does not fit the devices."""


def resolve_mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with -1 filled in; data includes the dcn_data factor."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    dcn = int(mesh_cfg.get("dcn_data", 1))
    sizes[0] *= dcn if sizes[0] != -1 else 1
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise MeshError(f"mesh: {num_devices} devices are not divisible by the fixed axes "
                            f"{dict(zip(MESH_AXES, sizes))}; choose mesh.data/fsdp/tensor whose product divides it")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise MeshError(f"mesh.data*mesh.fsdp*mesh.tensor (x mesh.dcn_data) = {math.prod(sizes)} "
                        f"but there are {num_devices} devices; make the product equal or set one axis to -1")
    if dcn > 1 and sizes[0] % dcn:
        raise MeshError(f"mesh.dcn_data={dcn} must divide the data axis size {sizes[0]}")
    return tuple(sizes)


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh with Auto (GSPMD) axes.

    With mesh.dcn_data > 1 on multi-slice TPU, the data axis spans slices (hybrid mesh: fast ICI
    inside a slice for fsdp/tensor, DCN only for data parallelism).
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(mesh_cfg, len(devices))
    dcn = int(mesh_cfg.get("dcn_data", 1))
    if dcn > 1 and hasattr(devices[0], "slice_index"):
        ici = (shape[0] // dcn, shape[1], shape[2])
        grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1), devices)
    else:
        try:
            grid = mesh_utils.create_device_mesh(shape, devices)
        except (ValueError, NotImplementedError, AssertionError):
            grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def eval_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh for evaluation, export and sampling of a finished member: every given device
    (default: all) on the fsdp axis, so any member fits wherever its training did."""
    import ml_collections  # noqa: PLC0415

    return make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1, "dcn_data": 1}), devices)


def logical_to_spec(axes: Sequence[str], shape: Sequence[int], mesh_shape: dict[str, int]) -> PartitionSpec:
    """PartitionSpec for an array with these logical axes, replicating non-divisible dims."""
    used: set[str] = set()
    parts = []
    for name, size in zip(axes, shape):
        mesh_axes = tuple(a for a in layout.LOGICAL_AXIS_RULES[name] if mesh_shape.get(a, 1) > 1 and a not in used)
        if mesh_axes and size % math.prod(mesh_shape[a] for a in mesh_axes) == 0:
            used.update(mesh_axes)
            parts.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
        else:
            parts.append(None)
    return PartitionSpec(*parts)


def param_shardings(model_cfg: Any, mesh: Mesh) -> dict:
    """NamedSharding tree in the layout's shape."""
    return layout.build_tree(model_cfg, lambda s: NamedSharding(mesh, logical_to_spec(s.axes, s.shape, dict(mesh.shape))))


def _key_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def tree_shardings(tree: Any, model_cfg: Any, mesh: Mesh) -> Any:
    """Shardings for any pytree holding param-shaped leaves (train state, optimizer state).

    A leaf whose key path ends with a layout path and has that param's shape gets the param's
    sharding (Adam moments follow their params); every other leaf (counters, scalars) is replicated.
    """
    specs = layout.spec_by_path(model_cfg)
    longest = max(len(p) for p in specs)
    replicated = NamedSharding(mesh, PartitionSpec())
    mesh_shape = dict(mesh.shape)

    def pick(path, leaf):
        names = _key_names(path)
        for n in range(min(longest, len(names)), 0, -1):
            spec = specs.get(names[-n:])
            if spec is not None and tuple(leaf.shape) == spec.shape:
                return NamedSharding(mesh, logical_to_spec(spec.axes, spec.shape, mesh_shape))
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """[batch, ...] arrays split over data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(layout.LOGICAL_AXIS_RULES["batch"], *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def constrain(x: jax.Array, axes: Sequence[str]) -> jax.Array:
    """with_sharding_constraint by logical axes under the current mesh (no-op without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, dict(mesh.shape)))


def process_rows(batch_sharding: jax.sharding.Sharding, global_batch: int, ndim: int = 2) -> np.ndarray:
    """Rows of a [global_batch, ...] array this process must supply, in the order that
    `jax.make_array_from_process_local_data` reads them (its shards' row starts, ascending).

    Taken from the sharding itself, not from an assumed block layout: when the tensor (or fsdp) axis
    spans hosts, several processes hold the same rows and must read identical data.
    """
    shape = (global_batch,) + (1,) * (ndim - 1)
    index_map = batch_sharding.addressable_devices_indices_map(shape)
    starts = sorted({idx[0].start or 0 for idx in index_map.values()})
    stops = {idx[0].start or 0: global_batch if idx[0].stop is None else idx[0].stop for idx in index_map.values()}
    return np.concatenate([np.arange(s, stops[s]) for s in starts]).astype(np.int64)


def axes_spanning_processes(mesh: Mesh) -> list[str]:
    """Mesh axes along which devices of different processes meet (the axes whose collectives cross hosts)."""
    procs = np.vectorize(lambda d: d.process_index)(mesh.devices)
    return [name for i, name in enumerate(mesh.axis_names)
            if mesh.devices.shape[i] > 1 and np.any(np.diff(procs, axis=i) != 0)]


_warned: set = set()


def undivided_dims(model_cfg: Any, mesh_shape: dict[str, int]) -> list[str]:
    """'param dim (size n) over axes (size m)' for each parameter dimension the mesh would split but
    cannot (its size is not divisible): those dimensions are replicated, e.g. 3 heads over tensor=2."""
    out = []
    for spec in layout.param_specs(model_cfg):
        for name, size in zip(spec.axes, spec.shape):
            axes = tuple(a for a in layout.LOGICAL_AXIS_RULES[name] if mesh_shape.get(a, 1) > 1)
            n = math.prod(mesh_shape[a] for a in axes) if axes else 1
            if n > 1 and size % n:
                out.append(f"{spec.name} {name} (size {size}) over {'x'.join(axes)} (size {n})")
    return out


def warn_undivided(model_cfg: Any, mesh: Mesh, what: str = "") -> None:
    """Logs (once per model and mesh) the dimensions that are replicated because they do not divide."""
    import logging  # noqa: PLC0415

    dims = undivided_dims(model_cfg, dict(mesh.shape))
    key = (repr(sorted(dims)), tuple(mesh.shape.items()))
    if dims and key not in _warned:
        _warned.add(key)
        logging.getLogger("jaxgrow").warning(
            "%smesh %s cannot split %d parameter dimension(s); they are replicated instead (correct, but uses "
            "more memory and compute per device): %s", f"{what}: " if what else "", dict(mesh.shape), len(dims),
            "; ".join(dims[:6]) + (" ..." if len(dims) > 6 else ""))
