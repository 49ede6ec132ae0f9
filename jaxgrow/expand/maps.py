"""Index maps: for every growable dimension, where each new position comes from and how it is scaled.

Everything here is host-side numpy computed from the two configs, so the maps are static under jit.

A `DimMap` for a dimension of size S -> S':
    src[j]      source index of new position j, or -1 for a fresh entry
    in_scale[j] multiplier where a parameter *reads* the dimension (1/copies for copy methods)
    out_scale[j] multiplier where a parameter *writes* it (sqrt(S'/S) for `zero` on the residual)
    gain_scale  multiplier on RMSNorm gains (1/sqrt(S'/S) for `zero`)
    dup[j]      True for a copy that is not the first occurrence of its source (AKI, noise)

and, for the optimizer moments, how the *gradient* of an entry transforms (DESIGN.md §3): a
parameter that becomes c·p while the function is kept gets gradient g/c; a copy whose consumers
were divided by n gets g/n; a copy whose inputs were divided by n keeps g:
    grad_in[j]   gradient multiplier where a parameter reads the dimension (1: inputs are unchanged)
    grad_out[j]  where it writes it (1/c for `zero`'s scaled residual; 1/copies for copy methods)
    grad_gain[j] on norm gains (c for `zero`'s residual; 1/copies for copy methods)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxgrow import config as config_lib


METHODS = config_lib.EXPANSION_METHODS  # the names are declared once, in config.py
DEPTHS = config_lib.DEPTH_STRATEGIES
DEPTH_POSITIONS = config_lib.DEPTH_POSITIONS
COPY_METHODS = ("tile", "bert2bert_fpi", "bert2bert_aki")


@dataclasses.dataclass(frozen=True)
class DimMap:
    src: np.ndarray
    in_scale: np.ndarray
    out_scale: np.ndarray
    gain_scale: float = 1.0
    grad_out: np.ndarray | None = None   # None: ones
    grad_gain: np.ndarray | None = None  # None: ones

    @property
    def grad_in(self) -> np.ndarray:
        return np.ones(len(self.src))

    def grad_out_vec(self) -> np.ndarray:
        return np.ones(len(self.src)) if self.grad_out is None else self.grad_out

    def grad_gain_vec(self) -> np.ndarray:
        return np.ones(len(self.src)) if self.grad_gain is None else self.grad_gain

    @property
    def identity(self) -> bool:
        n = len(self.src)
        return (n == len(self.in_scale) and np.array_equal(self.src, np.arange(n)) and np.all(self.in_scale == 1)
                and np.all(self.out_scale == 1) and self.gain_scale == 1.0)

    @property
    def fresh(self) -> np.ndarray:
        return self.src < 0

    @property
    def dup(self) -> np.ndarray:
        seen: set[int] = set()
        out = np.zeros(len(self.src), bool)
        for j, s in enumerate(self.src):
            if s >= 0:
                out[j] = s in seen
                seen.add(int(s))
        return out

    @property
    def old_size(self) -> int:
        return int(self.src.max()) + 1 if (self.src >= 0).any() else 0


@dataclasses.dataclass(frozen=True)
class LayerMap:
    src: np.ndarray        # source layer of each new layer
    identity_new: np.ndarray  # True where the new layer is an inserted identity block (zero writers)

    @property
    def identity(self) -> bool:
        return np.array_equal(self.src, np.arange(len(self.src))) and not self.identity_new.any()


@dataclasses.dataclass(frozen=True)
class Plan:
    method: str
    dims: dict[str, DimMap]   # embed, mlp, q_heads, kv_heads
    layers: LayerMap
    tie_to_untie: bool         # source tied, target untied: the LM head starts as the embedding's transpose
    final_gain_scale: float    # extra factor on the final norm gain (tied `zero`: 1/c^2 instead of 1/c)


def _copy_counts(src: np.ndarray, old: int) -> np.ndarray:
    return np.bincount(src[src >= 0], minlength=old).astype(np.float64)


def _width_map(old: int, new: int, method: str, residual: bool, rng: np.random.Generator) -> DimMap:
    """Map for the residual width (residual=True) or an internal width (FFN)."""
    if method == "zero":
        src = np.concatenate([np.arange(old), -np.ones(new - old, np.int64)])
        ones = np.ones(new)
        if residual and new > old:
            # Scale the residual stream by c = sqrt(S'/S) so its RMS over S' dims is unchanged (eps stays
            # exact), and divide every norm gain by c to cancel it.
            c = math.sqrt(new / old)
            return DimMap(src, ones, np.where(src >= 0, c, 0.0), 1.0 / c,
                          grad_out=np.where(src >= 0, 1.0 / c, 0.0), grad_gain=np.full(new, c))
        return DimMap(src, ones, ones)
    if method == "tile":
        src = np.arange(new) % old
    else:  # bert2bert: Net2Net random mapping for the extra units
        src = np.concatenate([np.arange(old), rng.integers(0, old, new - old)])
    counts = _copy_counts(src, old)
    # Every consumer of a copy was divided by its source's copy count, so the copy's gradient is g/n.
    return DimMap(src, 1.0 / counts[src], np.ones(new), grad_out=1.0 / counts[src], grad_gain=1.0 / counts[src])


def place_heads(H: int, K: int, H2: int, K2: int, copy: bool) -> tuple[np.ndarray, np.ndarray]:
    """(q_src[H2], kv_src[K2]) so that every old query head still meets (a copy of) its own KV head.

    New KV head k serves query slots k*g2 .. k*g2+g2-1 (g2 = H2/K2). Old KV group o (query heads
    o*g .. o*g+g-1) needs ceil(g/g2) copies of KV head o. `copy` methods fill every slot with a copy
    (balanced KV copies); `zero` places each old head once and leaves the rest fresh (-1).
    """
    g, g2 = H // K, H2 // K2
    need = -(-g // g2)
    if K2 < K * need:
        raise ValueError(f"dst_cfg.num_kv_heads={K2}: with dst_cfg.num_heads={H2} each of the {K} source KV groups "
                         f"({g} query heads) needs {need} KV heads, so num_kv_heads must be >= {K * need}")
    if copy:
        kv_src = np.arange(K2) * K // K2
    else:
        kv_src = np.concatenate([np.repeat(np.arange(K), need), -np.ones(K2 - K * need, np.int64)])
    q_src = -np.ones(H2, np.int64)
    copies_so_far = np.zeros(K, np.int64)
    for k, o in enumerate(kv_src):
        if o < 0:
            continue
        r = copies_so_far[o]
        copies_so_far[o] += 1
        for p in range(g2):
            idx = r * g2 + p
            if copy:
                q_src[k * g2 + p] = o * g + idx % g
            elif idx < g:
                q_src[k * g2 + p] = o * g + idx
    missing = sorted(set(range(H)) - set(q_src[q_src >= 0].tolist()))
    if missing:
        raise ValueError(f"dst_cfg.num_kv_heads={K2}: source query heads {missing} cannot meet a copy of their KV head "
                         f"with dst_cfg.num_heads={H2}; choose num_kv_heads so that heads per KV group divides evenly")
    return q_src, kv_src


def _head_maps(src_cfg: Any, dst_cfg: Any, method: str) -> tuple[DimMap, DimMap]:
    H, K, H2, K2 = src_cfg.num_heads, src_cfg.num_kv_heads, dst_cfg.num_heads, dst_cfg.num_kv_heads
    if (H, K) == (H2, K2):
        eye = lambda n: DimMap(np.arange(n), np.ones(n), np.ones(n))  # noqa: E731
        return eye(H), eye(K)
    q_src, kv_src = place_heads(H, K, H2, K2, copy=method != "zero")
    q_counts = _copy_counts(q_src, H)
    q_in = np.where(q_src >= 0, 1.0 / q_counts[np.maximum(q_src, 0)], 1.0)
    kv_counts = _copy_counts(kv_src, K)
    # A KV copy's gradient is the part of its source's gradient from the query heads it serves: g/n
    # when every copy serves (copies of) all of them, which `copy` placement gives; otherwise only the
    # sum over the copies is exact and g/n is its even share.
    kv_grad = np.where(kv_src >= 0, 1.0 / kv_counts[np.maximum(kv_src, 0)], 0.0)
    return (DimMap(q_src, q_in, np.ones(H2), grad_out=q_in), DimMap(kv_src, np.ones(K2), np.ones(K2), grad_out=kv_grad))


def layer_map(L: int, L2: int, depth: str, position: str) -> LayerMap:
    """Source layer of each new layer. identity: inserted copies with zero writers (exact);
    stack: G_stack / bert2BERT, the block list repeated; interleave: each block repeated in place."""
    if depth == "identity":
        n_new = L2 - L
        if position == "top":
            src = np.concatenate([np.arange(L), (np.arange(n_new) + L - min(n_new, L)) % L])
            new = np.concatenate([np.zeros(L, bool), np.ones(n_new, bool)])
        else:
            # Insert after old block i when i is at an evenly spaced slot; each new block copies the one before.
            after = (np.arange(1, n_new + 1) * L) // (n_new + 1) if n_new else np.zeros(0, np.int64)
            after = np.minimum(after, L - 1)
            src_list, new_list = [], []
            for i in range(L):
                src_list.append(i)
                new_list.append(False)
                for _ in range(int(np.sum(after == i))):
                    src_list.append(i)
                    new_list.append(True)
            src, new = np.array(src_list), np.array(new_list)
        return LayerMap(src.astype(np.int64), new)
    if depth == "stack":
        return LayerMap(np.arange(L2) % L, np.zeros(L2, bool))
    return LayerMap((np.arange(L2) * L) // L2, np.zeros(L2, bool))


def check(src_cfg: Any, dst_cfg: Any, method: str, depth: str, position: str = "interleave") -> None:
    """Every refusal, as a ValueError naming the field."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not an expansion method; valid: {list(METHODS)}")
    if depth not in DEPTHS:
        raise ValueError(f"depth={depth!r} is not a depth strategy; valid: {list(DEPTHS)}")
    if position not in DEPTH_POSITIONS:
        raise ValueError(f"depth_position={position!r} must be one of {list(DEPTH_POSITIONS)}")
    for name, cfg in (("src_cfg", src_cfg), ("dst_cfg", dst_cfg)):
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(f"{name}.num_heads={cfg.num_heads} must be divisible by {name}.num_kv_heads={cfg.num_kv_heads}")
    config_lib.validate_growth(src_cfg, dst_cfg, "src_cfg", "dst_cfg")
    if method == "tile":
        for key in ("hidden_size", "ffn_size", "num_heads", "num_kv_heads"):
            if dst_cfg[key] % src_cfg[key]:
                raise ValueError(f"dst_cfg.{key}={dst_cfg[key]} is not an integer multiple of src_cfg.{key}="
                                 f"{src_cfg[key]}; method='tile' needs integer factors (use method='zero')")
    if dst_cfg.tie_embeddings and not src_cfg.tie_embeddings:
        raise ValueError("dst_cfg.tie_embeddings=True but the source has a separate LM head; "
                         "a target cannot tie two different matrices (set dst_cfg.tie_embeddings=False)")
    if (dst_cfg.tie_embeddings and method in COPY_METHODS and dst_cfg.hidden_size > src_cfg.hidden_size):
        raise ValueError(f"dst_cfg.tie_embeddings=True: method={method!r} must untie the embedding to grow "
                         "hidden_size (the LM head needs the copies divided, the embedding does not); "
                         "set dst_cfg.tie_embeddings=False (see expand.resolve_target)")
    if (src_cfg.num_heads, src_cfg.num_kv_heads) != (dst_cfg.num_heads, dst_cfg.num_kv_heads):
        # The head placement itself is the test: it raises (naming num_kv_heads) when GQA groups cannot be kept.
        place_heads(src_cfg.num_heads, src_cfg.num_kv_heads, dst_cfg.num_heads, dst_cfg.num_kv_heads,
                    copy=method != "zero")


def needs_untie(src_cfg: Any, dst_cfg: Any, method: str) -> bool:
    return bool(src_cfg.tie_embeddings and method in COPY_METHODS and dst_cfg.hidden_size > src_cfg.hidden_size)


def make_plan(src_cfg: Any, dst_cfg: Any, method: str = "zero", depth: str = "identity",
              position: str = "interleave", map_seed: int = 0) -> Plan:
    check(src_cfg, dst_cfg, method, depth, position)
    rng = np.random.default_rng(map_seed)
    embed = _width_map(src_cfg.hidden_size, dst_cfg.hidden_size, method, residual=True, rng=rng)
    mlp = _width_map(src_cfg.ffn_size, dst_cfg.ffn_size, method, residual=False, rng=rng)
    q, kv = _head_maps(src_cfg, dst_cfg, method)
    layers = layer_map(src_cfg.num_layers, dst_cfg.num_layers, depth, position)
    tied_both = bool(src_cfg.tie_embeddings and dst_cfg.tie_embeddings)
    final_extra = embed.gain_scale if (tied_both and method == "zero") else 1.0
    return Plan(method, {"embed": embed, "mlp": mlp, "q_heads": q, "kv_heads": kv}, layers,
                tie_to_untie=bool(src_cfg.tie_embeddings and not dst_cfg.tie_embeddings),
                final_gain_scale=final_extra)
