"""The run config validated as a whole: the schema (config.validate), then what needs the layout, the LR rules
and the expansion maths: every member's peak LR, and each growth between adjacent members. Everything that
prepares a run (train, expand, import, plan, the experiments) calls `validate` before it writes anything."""

from __future__ import annotations

import math
from typing import Any

from jaxgrow import config as config_lib, expand
from jaxgrow.model import layout
from jaxgrow.train import schedules


def check_peak_lrs(cfg: Any, fam: list[config_lib.Member]) -> None:
    """Every member's peak LR under cfg.lr is finite and > 0 (a bad rule or table fails before any write)."""
    lr = cfg.lr
    for mem in fam:
        n = layout.non_embedding_param_count(mem.model)
        try:
            peak = schedules.peak_lr(n, lr.rule, peak=lr.peak, n_ref=lr.n_ref, alpha=lr.alpha, table=lr.table)
        except ValueError as e:
            raise config_lib.ConfigError(f"{e} (member {mem.name}, N={n:,})") from None
        if not (math.isfinite(peak) and peak > 0):
            raise config_lib.ConfigError(f"lr.rule={lr.rule!r} gives peak LR {peak} for member {mem.name} (N={n:,}); "
                                         "it must be finite and > 0")


def check_expansions(cfg: Any, fam: list[config_lib.Member]) -> None:
    """A progressive family can grow each member into the next with config.expansion."""
    if cfg.mode != "progressive":
        return
    e = cfg.expansion
    for prev, cur in zip(fam, fam[1:]):
        try:
            expand.check(prev.model, cur.model, e.method, e.depth, e.depth_position)
        except ValueError as err:
            raise config_lib.ConfigError(f"expansion members.{prev.name} -> members.{cur.name}: {err}") from None


def check_contexts(cfg: Any, fam: list[config_lib.Member]) -> None:
    """data.seq_len fits every member's RoPE-usable context (past it two positions can no longer be told apart)."""
    for mem in fam:
        context = config_lib.rope_context(mem.model)
        if cfg.data.seq_len > context:
            raise config_lib.ConfigError(
                f"data.seq_len={cfg.data.seq_len} exceeds member {mem.name}'s RoPE-usable context of {context} tokens "
                f"(head_dim={mem.model.head_dim}, rope_theta={mem.model.rope_theta:g}); lower data.seq_len or raise "
                "model.rope_theta")


def validate(cfg: Any) -> list[config_lib.Member]:
    """The ordered members of a valid run config; ConfigError (one line naming the field) otherwise."""
    fam = config_lib.validate(cfg)
    check_peak_lrs(cfg, fam)
    check_expansions(cfg, fam)
    check_contexts(cfg, fam)
    return fam


def check_batch_divides(cfg: Any, mesh: Any) -> None:
    """The global batch splits evenly over the batch-sharded mesh axes and the micro-batches (train and plan)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.data.batch_size % (shards * cfg.optimizer.grad_accum_steps):
        raise config_lib.ConfigError(f"data.batch_size={cfg.data.batch_size} must be divisible by mesh data*fsdp="
                                     f"{shards} x optimizer.grad_accum_steps={cfg.optimizer.grad_accum_steps}")
