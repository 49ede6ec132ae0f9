"""Growing a member's training state into the next member's, on the mesh (used by the family
pipeline and by the `expand` command), and the per-stage randomness both use."""

from __future__ import annotations

import functools
from typing import Any

import chex
import jax

from jaxgrow import expand
from jaxgrow.train import faults, trainer


def stage_key(seed: int, index: int, purpose: int) -> jax.Array:
    """Init (purpose 0) and expansion (purpose 1) randomness from the seed and the stage index only."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), index), purpose)


def grow(cfg: Any, src_model: Any, dst_model: Any, params: Any, opt_state: Any | None, optimizer, mesh,
         key: jax.Array) -> tuple[Any, Any]:
    """(params, opt_state) of `dst_model`, produced on `mesh` by jitted expansions whose out_shardings
    are the target layout's: nothing is gathered to one host. opt_state=None starts a fresh optimizer
    state (expansion.opt_state = reset); otherwise Adam's moments follow the params."""
    e = cfg.expansion
    kwargs = dict(src_cfg=src_model, dst_cfg=dst_model, method=e.method, depth=e.depth, depth_position=e.depth_position,
                  map_seed=cfg.seed)
    abstract = trainer.abstract_state(dst_model, optimizer, mesh)
    target = jax.tree.map(lambda x: x.sharding, abstract)
    with jax.set_mesh(mesh):
        new_params = jax.jit(functools.partial(expand.expand_params, noise=e.noise, **kwargs),
                             out_shardings=target.params)(params, key=key)
        faults.point("expanding")
        if opt_state is None:
            new_opt = jax.jit(optimizer.init, out_shardings=target.opt_state)(new_params)
        else:
            new_opt = jax.jit(functools.partial(expand.expand_opt_state, **kwargs),
                              out_shardings=target.opt_state)(opt_state, params)
    # The grown state must be exactly the target layout (tree, shapes, dtypes), or the first train
    # step would retrace or mis-shard; checked on the abstract values, no device sync.
    chex.assert_trees_all_equal_shapes_and_dtypes((new_params, new_opt), (abstract.params, abstract.opt_state))
    return new_params, new_opt
