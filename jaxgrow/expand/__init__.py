"""The expand wing: pure, function-preserving growth of a parameter pytree (and its Adam moments). Knows nothing
about training, files or meshes beyond an optional out-sharding; may import model and config.

    expand_params(params, src_cfg, dst_cfg, *, method="zero", depth="identity", noise=0.0, key=None)
    expand_opt_state(opt_state, params_src, src_cfg, dst_cfg, *, method=..., policy="carry")

`src_cfg`/`dst_cfg` are model configs (what `jaxgrow.model.init_params` takes); any subset of
hidden_size, ffn_size, num_heads, num_kv_heads and num_layers may grow. No Flax modules, files or
globals: both functions are jittable, e.g. with the target's shardings

    jax.jit(functools.partial(expand_params, src_cfg=a, dst_cfg=b),
            out_shardings=jaxgrow.model.sharding.param_shardings(b, mesh))(params, key=key)

Methods (width) x depth strategies; see the README's table for guarantees:
    zero            exact for any sizes: zero residual writers, random readers, gains rescaled
    tile            HyperCloning: exact for integer factors; `noise` adds cancelling +/- pairs
    bert2bert_fpi   Net2Net random copies, outgoing weights divided by the copy count (approximate)
    bert2bert_aki   FPI whose new output units come from the next layer (approximate)
    depth identity  inserted copies with zero o_proj/down_proj (exact); `depth_position` interleave|top
    depth stack     the block list repeated (G_stack / bert2BERT; approximate)
    depth interleave each block repeated in place (approximate)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxgrow import config as config_lib
from jaxgrow.expand import core
from jaxgrow.expand.maps import DEPTHS, METHODS, Plan, check, make_plan, needs_untie, place_heads
from jaxgrow.model import layout


__all__ = ["expand_params", "expand_opt_state", "POLICIES", "resolve_target", "make_plan", "check", "place_heads",
           "Plan", "METHODS", "DEPTHS"]


POLICIES = ("carry", "reset")


def _default_key(key: jax.Array | None) -> jax.Array:
    return jax.random.key(0) if key is None else key


def expand_params(params: dict, src_cfg: Any, dst_cfg: Any, *, method: str = "zero", depth: str = "identity",
                  noise: float = 0.0, key: jax.Array | None = None, depth_position: str = "interleave",
                  map_seed: int = 0) -> dict:
    """Grows `params` (layout of src_cfg) into the layout of dst_cfg.

    key: randomness for `zero`'s fresh readers and `tile`'s noise (default: key 0; pass one derived
      from your seed). map_seed: seed of bert2BERT's random unit mapping (static, host-side).
    Raises ValueError naming the field for shrinking sizes, a changed head_dim or vocab, non-integer
    `tile` factors, num_heads not divisible by num_kv_heads, or an impossible tie.
    """
    check(src_cfg, dst_cfg, method, depth, depth_position)
    fn = _jitted("param", _frozen(src_cfg), _frozen(dst_cfg), method, depth, depth_position, map_seed, float(noise), "carry")
    return fn(params, _default_key(key))


_frozen = config_lib.frozen


@functools.lru_cache(maxsize=128)
def _jitted(kind, src_cfg, dst_cfg, method, depth, depth_position, map_seed, noise, policy):
    """One compiled program per (configs, options): far faster than eager op-by-op, and it inlines
    into a caller's jit (so `out_shardings` on the outer jit still apply)."""
    plan = make_plan(src_cfg, dst_cfg, method, depth, depth_position, map_seed)
    if kind == "param":
        return jax.jit(lambda tree, key: core.expand_tree(tree, src_cfg, dst_cfg, plan, kind="param", key=key, noise=noise))
    return jax.jit(lambda tree: core.expand_tree(tree, src_cfg, dst_cfg, plan, kind=kind, key=None, noise=0.0))



def expand_opt_state(opt_state: Any, params_src: dict, src_cfg: Any, dst_cfg: Any, *, method: str = "zero",
                     depth: str = "identity", depth_position: str = "interleave", policy: str = "carry",
                     reset_count: bool = False, map_seed: int = 0) -> Any:
    """Maps an optax state through the same index map as the params.

    policy="carry": Adam's `mu` follows its param's gather and the *gradient's* scale (a param that
      becomes c·p has gradient g/c; a copy whose consumers were divided by n has g/n), `nu` the square
      of that; fresh entries and inserted identity layers get 0. Exact wherever the param map is
      exact: the mapped source gradient equals the gradient at the grown params. Adam's step count is
      kept unless reset_count. policy="reset": every param-shaped leaf becomes 0 and counts restart
      at 0.
    Any other param-shaped subtree is mapped like `mu`; scalars are kept.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} must be one of {list(POLICIES)}")
    check(src_cfg, dst_cfg, method, depth, depth_position)
    frozen = (_frozen(src_cfg), _frozen(dst_cfg), method, depth, depth_position, map_seed, 0.0, policy)
    params_def = jax.tree.structure(params_src)
    dst_shapes = layout.build_tree(dst_cfg, lambda s: s.shape)

    def zeros():
        return jax.tree.map(lambda shape: jnp.zeros(shape, jnp.float32), dst_shapes,
                            is_leaf=lambda x: isinstance(x, tuple))

    def moments(tree: dict, kind: str) -> dict:
        if policy == "reset":
            return zeros()
        return _jitted(kind, *frozen)(tree)

    def on_moments(node: Any) -> Any:
        fields = {"mu": moments(node.mu, "mu"), "nu": moments(node.nu, "nu")}
        if "count" in node._fields and (reset_count or policy == "reset"):
            fields["count"] = jnp.zeros_like(node.count)
        return node._replace(**fields)

    return layout.map_param_trees(opt_state, params_def, on_moments, lambda tree: moments(tree, "mu"))


def resolve_target(src_cfg: Any, dst_cfg: Any, method: str) -> tuple[ml_collections.ConfigDict, str | None]:
    """dst_cfg adjusted for the method: copy methods that grow hidden_size untie the embedding.

    Returns (config, note); note says what changed (None if nothing did).
    """
    out = ml_collections.ConfigDict(dst_cfg.to_dict() if hasattr(dst_cfg, "to_dict") else dict(dst_cfg))
    if needs_untie(src_cfg, dst_cfg, method) and dst_cfg.tie_embeddings:
        out.tie_embeddings = False
        return out, (f"tie_embeddings set to False: method={method!r} grows hidden_size "
                     f"{src_cfg.hidden_size}->{dst_cfg.hidden_size}, which needs a separate LM head")
    return out, None

