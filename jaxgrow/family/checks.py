"""The run config validated as a whole: the schema (config.validate), then what needs the layout, the LR rules,
the transition table and the expansion and pruning maths: every member's peak LR, each row's growth or pruning, the
RoPE context. Everything that prepares a run (train, expand, prune, import, plan, the experiments) calls it through
`run_plan.resolve` before it writes anything."""

from __future__ import annotations

import math
from typing import Any

from jaxgrow import config as config_lib, expand, prune
from jaxgrow.family import budgets
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


def check_transitions(cfg: Any, fam: list[config_lib.Member], rows: list) -> None:
    """Each grow row can grow its source into its member with config.expansion, and each prune row can prune its
    source down to its member (sizes, head grouping); vocab and head_dim are shared by the whole family."""
    by_name = {m.name: m for m in fam}
    e = cfg.expansion
    for row in rows:
        if row.init == "scratch":
            continue
        src, dst = by_name[row.source], by_name[row.member]
        config_lib.validate_shared(src.model, dst.model, f"members.{src.name}", f"members.{dst.name}")
        try:
            if row.init == "grow":
                config_lib.validate_growth(src.model, dst.model, f"members.{src.name}", f"members.{dst.name}")
                expand.check(src.model, dst.model, e.method, e.depth, e.depth_position)
            else:
                prune.check(src.model, dst.model)
        except config_lib.ConfigError:
            raise
        except ValueError as err:
            what = "expansion" if row.init == "grow" else "pruning"
            raise config_lib.ConfigError(f"{what} members.{src.name} -> members.{dst.name}: {err}") from None


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
    check_transitions(cfg, fam, budgets.table(cfg, fam=fam))
    check_contexts(cfg, fam)
    return fam


def check_batch_divides(cfg: Any, mesh: Any) -> None:
    """The global batch splits evenly over the batch-sharded mesh axes and the micro-batches (train and plan)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.data.batch_size % (shards * cfg.optimizer.grad_accum_steps):
        raise config_lib.ConfigError(f"data.batch_size={cfg.data.batch_size} must be divisible by mesh data*fsdp="
                                     f"{shards} x optimizer.grad_accum_steps={cfg.optimizer.grad_accum_steps}")
