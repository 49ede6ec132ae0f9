"""Pruning a member's training state into a smaller member's, on the mesh: the family pipeline's `prune(M)` rows and
the `prune` command. Units are ranked by activation importance (jaxgrow.prune.importance) on calibration batches of
the training stream, never the held-out data; the selection is then applied by a jitted prune whose out_shardings
are the target layout's, so nothing is gathered to one host."""

from __future__ import annotations

import functools
from typing import Any

import chex
import jax
import numpy as np

from jaxgrow import prune as prune_lib
from jaxgrow.data import pipeline
from jaxgrow.train import faults, trainer


CALIBRATION_BATCH = 8  # sequences per importance forward pass (the scores do not depend on it)


def calibration_tokens(train_sources: Any, cfg: Any) -> np.ndarray:
    """The inputs of the first config.prune.calibration_batches global batches of the training stream in the seed's
    order ([n * batch_size, seq_len] ids): the same on every process, so every host selects the same units."""
    dataset = pipeline.train_dataset(train_sources, cfg.data.seq_len, cfg.data.batch_size, cfg.seed)
    windows = np.concatenate([dataset[k] for k in range(int(cfg.prune.calibration_batches))])
    return windows[:, :-1]


def prune(src_model: Any, dst_model: Any, params: Any, opt_state: Any | None, optimizer, mesh, tokens: np.ndarray,
          document_eos: int | None = None) -> tuple[Any, Any]:
    """(params, opt_state) of `dst_model`: the units of `src_model` that matter most on `tokens` kept. opt_state=None
    starts a fresh optimizer state (prune.opt_state = reset); otherwise Adam's moments follow the kept units."""
    scores = prune_lib.importance(params, src_model, tokens, document_eos=document_eos,
                                  batch_size=min(CALIBRATION_BATCH, len(tokens)))
    keep = prune_lib.selection(src_model, dst_model, scores=scores)
    abstract = trainer.abstract_state(dst_model, optimizer, mesh)
    target = jax.tree.map(lambda x: x.sharding, abstract)
    kwargs = dict(src_cfg=src_model, dst_cfg=dst_model, keep=keep)
    with jax.set_mesh(mesh):
        new_params = jax.jit(functools.partial(prune_lib.prune_params, **kwargs), out_shardings=target.params)(params)
        faults.point("pruning")
        if opt_state is None:
            new_opt = jax.jit(optimizer.init, out_shardings=target.opt_state)(new_params)
        else:
            new_opt = jax.jit(functools.partial(prune_lib.prune_opt_state, **kwargs),
                              out_shardings=target.opt_state)(opt_state)
    # exactly the target layout (tree, shapes, dtypes), or the first train step would retrace or mis-shard
    chex.assert_trees_all_equal_shapes_and_dtypes((new_params, new_opt), (abstract.params, abstract.opt_state))
    return new_params, new_opt
