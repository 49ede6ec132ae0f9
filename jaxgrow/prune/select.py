"""Which units a pruning keeps: validation of the target and host-side index selection.

Everything here is numpy computed from the configs, the importance scores and the caller's `keep`
before any tracing, so the indices are constants under jit (like expand's maps).

A `Selection` holds, in *source* indexing and always sorted (so kept units keep their order):
    hidden    [D']          residual channels, shared by every layer (the residual stream is one space)
    layers    [L']          source layers kept, in order
    ffn       [L_src, F']   FFN neurons kept in each source layer
    kv_heads  [L_src, K']   KV groups kept in each source layer (GQA groups are kept whole)
    heads     [L_src, H']   query heads kept in each source layer: H'/K' from each kept group (a target group
                            larger than a source group takes every head of its group plus the best of dropped ones)
Per-layer rows are indexed by the *source* layer, so a row does not move when `layers` changes;
rows of dropped layers are validated but unused. The layout's logical axis of each field is in
`AXIS_OF`: a parameter is pruned on every axis whose name is there, whatever the parameter is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


# keep/scores field -> the layout's logical axis it selects on
AXIS_OF = {"hidden": "embed", "ffn": "mlp", "heads": "q_heads", "kv_heads": "kv_heads", "layers": "layers"}
PER_LAYER = ("ffn", "heads", "kv_heads")
# keep field -> the config field that sets its kept count
SIZE_OF = {"hidden": "hidden_size", "ffn": "ffn_size", "heads": "num_heads", "kv_heads": "num_kv_heads",
           "layers": "num_layers"}


def check(src_cfg: Any, dst_cfg: Any) -> None:
    """Validates a pruning target without params; every refusal is a ValueError naming the field."""
    for key in ("vocab_size", "head_dim"):
        if dst_cfg[key] != src_cfg[key]:
            raise ValueError(f"dst_cfg.{key}={dst_cfg[key]} must equal src_cfg.{key}={src_cfg[key]} "
                             "(pruning cannot change it)")
    for key in SIZE_OF.values():
        if dst_cfg[key] < 1:
            raise ValueError(f"dst_cfg.{key}={dst_cfg[key]} must be >= 1")
        if dst_cfg[key] > src_cfg[key]:
            raise ValueError(f"dst_cfg.{key}={dst_cfg[key]} grows from {src_cfg[key]}; pruning only shrinks "
                             f"(src_cfg.{key}={src_cfg[key]}; grow with jaxgrow.expand)")
    for name, cfg in (("src_cfg", src_cfg), ("dst_cfg", dst_cfg)):
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(f"{name}.num_heads={cfg.num_heads} must be divisible by "
                             f"{name}.num_kv_heads={cfg.num_kv_heads}")
    # (a target group larger than a source group is filled from dropped groups by `selection`: see _heads)
    if bool(dst_cfg.tie_embeddings) != bool(src_cfg.tie_embeddings):
        raise ValueError(f"dst_cfg.tie_embeddings={dst_cfg.tie_embeddings} must equal "
                         f"src_cfg.tie_embeddings={src_cfg.tie_embeddings} (pruning keeps the LM head as it is)")


@dataclasses.dataclass(frozen=True, eq=False)
class Selection:
    """Concrete kept indices (see the module docstring). Hashable by value: a jit cache key."""

    hidden: np.ndarray
    layers: np.ndarray
    ffn: np.ndarray
    kv_heads: np.ndarray
    heads: np.ndarray
    src_sizes: tuple[tuple[str, int], ...]  # (field, source size) of every field, to tell identity axes

    def _key(self) -> tuple:
        return tuple((f, getattr(self, f).shape, getattr(self, f).tobytes()) for f in AXIS_OF) + self.src_sizes

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selection) and self._key() == other._key()

    def is_identity(self, field: str) -> bool:
        """Everything kept: sorted unique in-range indices of full count can only be arange."""
        return getattr(self, field).shape[-1] == dict(self.src_sizes)[field]

    def indices_for_axis(self, axis: str) -> np.ndarray | None:
        """Indices to gather on a logical axis, or None where nothing is pruned. A per-layer field
        comes as [L', n] rows of the kept layers, or as one [n] row when every kept layer agrees
        (a plain gather, cheaper than a batched one)."""
        field = next((f for f, a in AXIS_OF.items() if a == axis), None)
        if field is None or self.is_identity(field):
            return None
        idx = getattr(self, field)
        if field not in PER_LAYER:
            return idx
        rows = idx[self.layers]
        return rows[0] if (rows == rows[:1]).all() else rows


def _sizes(cfg: Any) -> dict[str, int]:
    return {field: int(cfg[key]) for field, key in SIZE_OF.items()}


def _checked_row(name: str, row: np.ndarray, full: int, count: int, size_field: str) -> np.ndarray:
    if row.dtype.kind not in "iu":
        raise ValueError(f"keep[{name!r}] must hold integer indices, got dtype {row.dtype}")
    if len(row) != count:
        raise ValueError(f"keep[{name!r}] has {len(row)} indices per row; dst_cfg.{size_field}={count} needs {count}")
    bad = row[(row < 0) | (row >= full)]
    if len(bad):
        raise ValueError(f"keep[{name!r}] index {int(bad[0])} is out of range [0, {full}) "
                         f"(src_cfg.{size_field}={full})")
    unique, counts = np.unique(row, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"keep[{name!r}] repeats indices {unique[counts > 1].tolist()}")
    return unique.astype(np.int64)  # sorted: kept units keep their source order


def _checked(name: str, given: Any, full: int, count: int, layers: int | None) -> np.ndarray:
    """keep[name] as sorted int64 indices: [count], or [layers, count] for a per-layer field (a 1-D
    keep for a per-layer field applies to every layer)."""
    arr = np.asarray(given)
    size_field = SIZE_OF[name]
    if layers is None or arr.ndim == 1:
        if arr.ndim != 1:
            raise ValueError(f"keep[{name!r}] must be 1-D, got shape {arr.shape}")
        row = _checked_row(name, arr, full, count, size_field)
        return row if layers is None else np.tile(row, (layers, 1))
    if arr.ndim != 2 or arr.shape[0] != layers:
        raise ValueError(f"keep[{name!r}] must be [{count}] or [src_cfg.num_layers={layers}, {count}] "
                         f"(rows indexed by source layer), got shape {arr.shape}")
    return np.stack([_checked_row(name, r, full, count, size_field) for r in arr])


def _score(scores: Any, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if scores is None:
        return None
    value = scores[name] if isinstance(scores, dict) else getattr(scores, name)
    value = np.asarray(value, np.float64)
    if value.shape != shape:
        raise ValueError(f"scores.{name} has shape {value.shape}; the source config needs {shape}")
    return value


def top(score: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` highest scores, sorted by index. Ties keep the earlier unit (a stable
    sort), and NaN scores rank lowest."""
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
    return np.sort(order[:count]).astype(np.int64)


def _missing(name: str, full: int, count: int) -> ValueError:
    return ValueError(f"dst_cfg.{SIZE_OF[name]}={count} shrinks from {full} but neither keep[{name!r}] nor scores "
                      "says which to keep (pass scores=importance(...) or keep)")


def _flat_or_per_layer(name: str, keep: dict, scores: Any, full: int, count: int, layers: int | None) -> np.ndarray:
    if name in keep:
        return _checked(name, keep[name], full, count, layers)
    shape = (full,) if layers is None else (layers, full)
    if count == full:
        return np.broadcast_to(np.arange(full), shape).copy()
    score = _score(scores, "kv_groups" if name == "kv_heads" else name, shape)
    if score is None:
        raise _missing(name, full, count)
    return top(score, count) if layers is None else np.stack([top(s, count) for s in score])


def _heads(keep: dict, scores: Any, src: dict[str, int], dst: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(kv_heads [L, K'], heads [L, H']): whole KV groups, with H'/K' query heads from each kept one."""
    L, H, K, H2, K2 = src["layers"], src["heads"], src["kv_heads"], dst["heads"], dst["kv_heads"]
    group, group2 = H // K, H2 // K2
    if "heads" in keep:
        if group2 > group:
            raise ValueError(f"keep['heads']: dst_cfg.num_heads={H2} with dst_cfg.num_kv_heads={K2} needs {group2} query "
                             f"heads per KV group, but each source group has only {group} (src_cfg.num_heads={H}, "
                             f"src_cfg.num_kv_heads={K}); explicit heads cannot merge groups: let scores choose")
        heads = _checked("heads", keep["heads"], H, H2, L)
        for l, row in enumerate(heads):
            groups, counts = np.unique(row // group, return_counts=True)
            if len(groups) != K2 or (counts != group2).any():
                raise ValueError(f"keep['heads'] row {l} takes {counts.tolist()} query heads from KV groups "
                                 f"{groups.tolist()}; dst_cfg.num_heads={H2}/num_kv_heads={K2} needs exactly "
                                 f"{group2} from each of {K2} groups")
        derived = np.stack([np.unique(row // group) for row in heads])
        if "kv_heads" in keep and not np.array_equal(_checked("kv_heads", keep["kv_heads"], K, K2, L), derived):
            raise ValueError("keep['kv_heads'] disagrees with the KV groups of keep['heads']")
        return derived, heads
    kv = _flat_or_per_layer("kv_heads", keep, scores, K, K2, L)
    if group2 == group:
        return kv, (kv[:, :, None] * group + np.arange(group)).reshape(L, H2)
    head_scores = _score(scores, "heads", (L, H))
    if head_scores is None:
        raise _missing("heads", H, H2)
    if group2 > group:
        return kv, np.stack([_merged_heads(head_scores[l], kv[l], group, H2) for l in range(L)])
    rows = [np.concatenate([g * group + top(head_scores[l, g * group:(g + 1) * group], group2) for g in kv[l]])
            for l in range(L)]
    return kv, np.stack(rows)


def _merged_heads(head_scores: np.ndarray, kv: np.ndarray, group: int, count: int) -> np.ndarray:
    """Target groups larger than the source's (e.g. 4 heads / 2 KV -> 3 heads / 1 KV): every head of the kept groups,
    then the best heads of the dropped groups until `count`, sorted. In sorted order the target's group j reads kept
    KV head j, so a head from a dropped group reads a KV head it was not trained with: approximate, like every width
    pruning (distillation recovers it). The kept groups stay whole."""
    own = np.concatenate([g * group + np.arange(group) for g in kv])
    others = np.setdiff1d(np.arange(len(head_scores)), own)
    extra = others[top(head_scores[others], count - len(own))]
    return np.sort(np.concatenate([own, extra])).astype(np.int64)


def selection(src_cfg: Any, dst_cfg: Any, *, scores: Any = None, keep: Any = None) -> Selection:
    """The kept indices for pruning src_cfg to dst_cfg, as concrete numpy arrays (static under jit).

    keep: a Selection (validated, returned as is), or a dict with any of
      hidden [D'], layers [L'] (source layers, in order), ffn / heads / kv_heads as [n] (the same
      units in every layer) or [src_cfg.num_layers, n] (rows indexed by *source* layer).
      Indices are sorted here, so kept units keep their source order.
    scores: an `Importance` (or a dict with its fields) filling every field `keep` leaves out:
      the highest-scoring units are kept (per layer for ffn, KV groups and the heads inside them).
    An axis that does not shrink keeps everything; one that shrinks with neither raises.
    """
    check(src_cfg, dst_cfg)
    src, dst = _sizes(src_cfg), _sizes(dst_cfg)
    if isinstance(keep, Selection):
        if keep.src_sizes == tuple(src.items()) and all(
                getattr(keep, f).shape[-1] == dst[f] for f in AXIS_OF) and len(keep.heads) == src["layers"]:
            return keep  # made by `selection` for these configs (it may hold merged groups, which a dict cannot)
        keep = {f: getattr(keep, f) for f in AXIS_OF}
    keep = dict(keep or {})
    unknown = sorted(set(keep) - set(AXIS_OF))
    if unknown:
        raise ValueError(f"keep has unknown fields {unknown}; valid: {list(AXIS_OF)}")
    L = src["layers"]
    hidden = _flat_or_per_layer("hidden", keep, scores, src["hidden"], dst["hidden"], None)
    layers = _flat_or_per_layer("layers", keep, scores, L, dst["layers"], None)
    ffn = _flat_or_per_layer("ffn", keep, scores, src["ffn"], dst["ffn"], L)
    kv_heads, heads = _heads(keep, scores, src, dst)
    return Selection(hidden, layers, ffn, kv_heads, heads, tuple(src.items()))
