"""The prune wing: pure pruning of a parameter pytree (and its Adam moments), expand's mirror. Knows nothing about
training, files or meshes beyond an optional out-sharding; may import model and config.

    importance(params, cfg, tokens, *, document_eos=None, batch_size=None) -> Importance
    selection(src_cfg, dst_cfg, *, scores=None, keep=None) -> Selection     (host-side numpy indices)
    prune_params(params, src_cfg, dst_cfg, *, scores=None, keep=None) -> params   (dst_cfg's layout)
    prune_opt_state(opt_state, src_cfg, dst_cfg, *, scores=None, keep=None) -> opt_state
    check(src_cfg, dst_cfg)                                                  (validation without params)

`src_cfg`/`dst_cfg` are model configs; any subset of hidden_size, ffn_size, num_heads,
num_kv_heads and num_layers may shrink; head_dim, vocab_size and tie_embeddings stay. The kept
units come from `scores` (the highest `importance`), from `keep` (explicit indices), or both (keep
wins field by field); see select.py for the indexing (per-layer fields are indexed by *source*
layer). No Flax modules, files or globals: with the selection computed first, pruning is jittable
with the target's shardings,

    keep = prune.selection(a, b, scores=prune.importance(params, a, calibration_tokens))
    jax.jit(functools.partial(prune_params, src_cfg=a, dst_cfg=b, keep=keep),
            out_shardings=jaxgrow.model.sharding.param_shardings(b, mesh))(params)

What it guarantees:
    an axis that does not shrink     bitwise unchanged; a kept entry is bitwise the source's
    layers, FFN neurons, heads       exact as a function: the pruned model computes what the source does
                                     with the removed units' writers zeroed. So pruning back what growth
                                     added (identity depth, `zero` neurons/heads: zero writers, which
                                     `importance` scores exactly 0) restores the parent bitwise
    hidden_size                      approximate by nature: RMSNorm over fewer channels renormalises
                                     (as in Minitron); recover by training or distillation
    GQA                              KV groups are kept whole; H'/K' query heads kept in each kept group
    Adam moments                     mu/nu selected with the same indices (a kept entry's moments are the
                                     source's exactly); step counts kept
Under a mesh (`jax.set_mesh`) each pruned axis is one take, which GSPMD partitions keeping the other
axes' sharding; without one, each leaf is a single gather (core.py says why).
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from jaxgrow import config as config_lib
from jaxgrow.model import layout
from jaxgrow.prune import core
from jaxgrow.prune.activations import Importance, importance
from jaxgrow.prune.select import AXIS_OF, Selection, check, selection


__all__ = ["importance", "selection", "prune_params", "prune_opt_state", "check", "Importance", "Selection",
           "AXIS_OF"]


_frozen = config_lib.frozen


@functools.lru_cache(maxsize=64)
def _jitted(src_cfg: Any, dst_cfg: Any, sel: Selection):
    """One compiled program per (configs, selection): far faster than eager op-by-op, and it inlines
    into a caller's jit (so `out_shardings` on the outer jit still apply)."""
    return jax.jit(lambda tree: core.prune_tree(tree, src_cfg, dst_cfg, sel))


def prune_params(params: dict, src_cfg: Any, dst_cfg: Any, *, scores: Any = None, keep: Any = None) -> dict:
    """Prunes `params` (layout of src_cfg) to the layout of dst_cfg, keeping the selected units.

    scores: an `Importance` for the source; keep: a `Selection` or a dict of explicit indices
    (see `selection`). Raises ValueError naming the field for a growing size, a changed head_dim,
    vocab or tie, an impossible GQA grouping, or bad keep indices (out of range, repeated, wrong count).
    """
    sel = selection(src_cfg, dst_cfg, scores=scores, keep=keep)
    return _jitted(_frozen(src_cfg), _frozen(dst_cfg), sel)(params)



def prune_opt_state(opt_state: Any, src_cfg: Any, dst_cfg: Any, *, scores: Any = None, keep: Any = None) -> Any:
    """Applies the params' selection to an optax state: Adam's mu and nu (and any other subtree in
    the source's param layout) are gathered with the same indices, so the moments of a kept entry
    are exactly the source's; step counts and other scalars are kept.
    """
    sel = selection(src_cfg, dst_cfg, scores=scores, keep=keep)
    prune = _jitted(_frozen(src_cfg), _frozen(dst_cfg), sel)
    params_def = jax.tree.structure(layout.build_tree(src_cfg, lambda s: 0))

    return layout.map_param_trees(opt_state, params_def, lambda node: node._replace(mu=prune(node.mu), nu=prune(node.nu)),
                                  prune)
