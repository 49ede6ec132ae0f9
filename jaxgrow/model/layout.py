"""THE parameter layout: every parameter's path, shape, logical axes, initialiser and axis roles.

Model init, sharding, expansion, checkpoint metadata and HF export all read `param_specs(cfg)`.
Adding a parameter means editing `param_specs` and nothing else.

Shapes (D = hidden_size, F = ffn_size, H = num_heads, K = num_kv_heads, d = head_dim,
L = num_layers, V = vocab_size); block parameters are stacked on a leading `layers` axis:

    embed/embedding        [V, D]        (vocab, embed)
    layers/attn_norm/scale [L, D]        (layers, embed)
    layers/attn/q_proj     [L, D, H, d]  (layers, embed, q_heads, head_dim)
    layers/attn/k_proj     [L, D, K, d]  (layers, embed, kv_heads, head_dim)
    layers/attn/v_proj     [L, D, K, d]  (layers, embed, kv_heads, head_dim)
    layers/attn/o_proj     [L, H, d, D]  (layers, q_heads, head_dim, embed)
    layers/mlp_norm/scale  [L, D]        (layers, embed)
    layers/mlp/gate_proj   [L, D, F]     (layers, embed, mlp)
    layers/mlp/up_proj     [L, D, F]     (layers, embed, mlp)
    layers/mlp/down_proj   [L, F, D]     (layers, mlp, embed)
    final_norm/scale       [D]           (embed,)
    lm_head/kernel         [D, V]        (embed, vocab)      -- absent when tie_embeddings

Axis roles (used by expansion): an axis is `in` when the parameter contracts over it (it reads
that dimension), `out` when it produces it, `gain` for RMSNorm scales. The embedding writes the
residual stream (`embed` is `out`), the LM head reads it (`embed` is `in`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator


# Bumped whenever a path, shape or axis meaning changes; stored in every checkpoint so that an
# old checkpoint fails loudly instead of mis-loading.
LAYOUT_VERSION = 1

# Logical axis -> mesh axes. One table for params and activations (MaxText's logical_axis_rules).
# A dimension is sharded over its mesh axes only when its size divides their product; otherwise
# it is replicated (e.g. MQA's single KV head over tensor=2).
LOGICAL_AXIS_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "length": (),
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "head_dim": (),
    "layers": (),
    # activations: batch-sharded; features sharded only where tensor parallelism splits them
    "activation_embed": (),
    "activation_heads": ("tensor",),
    "activation_mlp": ("tensor",),
    "activation_vocab": ("tensor",),
}

@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter: where it lives, its shape, and what each axis means.

    path: nested-dict keys, e.g. ("layers", "attn", "q_proj").
    shape: full shape including the stacked `layers` axis for block params.
    axes: logical axis name per dimension (keys of LOGICAL_AXIS_RULES).
    roles: per axis, "in" | "out" | "gain" | "stack" (the layers axis) | "fixed" (never grows).
    init: "normal" (std = cfg.init_std, scaled for residual writers), "ones" or "zeros".
    std: standard deviation for "normal".
    """

    path: tuple[str, ...]
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    roles: tuple[str, ...]
    init: str
    std: float = 0.0

    @property
    def name(self) -> str:
        return "/".join(self.path)

    @property
    def stacked(self) -> bool:
        return bool(self.axes) and self.axes[0] == "layers"

    @property
    def writes_residual(self) -> bool:
        """True for the parameters whose output is added to the residual stream."""
        return "embed" in self.axes and self.roles[self.axes.index("embed")] == "out"


def param_specs(cfg: Any) -> list[ParamSpec]:
    """The parameter declaration for a model config (ConfigDict or any attribute object)."""
    V, D, F = cfg.vocab_size, cfg.hidden_size, cfg.ffn_size
    H, K, d, L = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
    std = float(cfg.init_std)
    # GPT-2/Megatron: residual writers get std / sqrt(2L) so the stream's variance stays O(1).
    out_std = std / (2.0 * L) ** 0.5
    specs = [
        ParamSpec(("embed", "embedding"), (V, D), ("vocab", "embed"), ("fixed", "out"), "normal", std),
        ParamSpec(("layers", "attn_norm", "scale"), (L, D), ("layers", "embed"), ("stack", "gain"), "ones"),
        ParamSpec(("layers", "attn", "q_proj"), (L, D, H, d), ("layers", "embed", "q_heads", "head_dim"),
                  ("stack", "in", "out", "fixed"), "normal", std),
        ParamSpec(("layers", "attn", "k_proj"), (L, D, K, d), ("layers", "embed", "kv_heads", "head_dim"),
                  ("stack", "in", "out", "fixed"), "normal", std),
        ParamSpec(("layers", "attn", "v_proj"), (L, D, K, d), ("layers", "embed", "kv_heads", "head_dim"),
                  ("stack", "in", "out", "fixed"), "normal", std),
        ParamSpec(("layers", "attn", "o_proj"), (L, H, d, D), ("layers", "q_heads", "head_dim", "embed"),
                  ("stack", "in", "fixed", "out"), "normal", out_std),
        ParamSpec(("layers", "mlp_norm", "scale"), (L, D), ("layers", "embed"), ("stack", "gain"), "ones"),
        ParamSpec(("layers", "mlp", "gate_proj"), (L, D, F), ("layers", "embed", "mlp"),
                  ("stack", "in", "out"), "normal", std),
        ParamSpec(("layers", "mlp", "up_proj"), (L, D, F), ("layers", "embed", "mlp"),
                  ("stack", "in", "out"), "normal", std),
        ParamSpec(("layers", "mlp", "down_proj"), (L, F, D), ("layers", "mlp", "embed"),
                  ("stack", "in", "out"), "normal", out_std),
        ParamSpec(("final_norm", "scale"), (D,), ("embed",), ("gain",), "ones"),
    ]
    if not cfg.tie_embeddings:
        specs.append(ParamSpec(("lm_head", "kernel"), (D, V), ("embed", "vocab"), ("in", "fixed"), "normal", std))
    return specs


def spec_by_path(cfg: Any) -> dict[tuple[str, ...], ParamSpec]:
    return {s.path: s for s in param_specs(cfg)}


def get_path(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def build_tree(cfg: Any, leaf_fn) -> dict:
    """A nested dict in the layout's shape with `leaf_fn(spec)` at every leaf."""
    tree: dict = {}
    for spec in param_specs(cfg):
        set_path(tree, spec.path, leaf_fn(spec))
    return tree


def iter_leaves(cfg: Any, tree: dict) -> Iterator[tuple[ParamSpec, Any]]:
    for spec in param_specs(cfg):
        yield spec, get_path(tree, spec.path)


def embedding_param_count(cfg: Any) -> int:
    """Parameters in the token embedding and (untied) LM head."""
    n = cfg.vocab_size * cfg.hidden_size
    return n if cfg.tie_embeddings else 2 * n


def param_count(cfg: Any) -> int:
    """Total parameters: the sum over the layout's declaration."""
    return sum(math.prod(spec.shape) for spec in param_specs(cfg))


def non_embedding_param_count(cfg: Any) -> int:
    """N: parameters outside the token embedding and LM head (the N of scaling laws and LR rules)."""
    return param_count(cfg) - embedding_param_count(cfg)


def map_param_trees(state: Any, params_def: Any, on_moments: Callable[[Any], Any],
                    on_tree: Callable[[dict], dict]) -> Any:
    """An optimizer state (any optax chain's) with every param-shaped part mapped, the rest kept: on_moments(node)
    for Adam-like moments (a namedtuple with `mu` and `nu`, which may also carry a step count), on_tree(tree) for any
    other subtree with the params' structure `params_def`. What expansion and pruning both walk."""
    import jax  # noqa: PLC0415

    def visit(node: Any) -> Any:
        if hasattr(node, "_fields") and "mu" in node._fields and "nu" in node._fields:
            return on_moments(node)
        if isinstance(node, dict) and jax.tree.structure(node) == params_def:
            return on_tree(node)
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return node._replace(**{f: visit(getattr(node, f)) for f in node._fields})
        if isinstance(node, (tuple, list)):
            return type(node)(visit(n) for n in node)
        if isinstance(node, dict):
            return {k: visit(v) for k, v in node.items()}
        return node

    return visit(state)
