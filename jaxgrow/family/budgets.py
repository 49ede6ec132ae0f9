"""Per-stage budgets: tokens, steps and FLOPs of every stage of the transition table, and each stage's LR schedule.

The paper's cost rule (`budget.rule = "paper"`), read row by row from the transition table (transitions.py). With
N_i the non-embedding parameters and F_i the train FLOPs per token of member i, and T_L = budget.largest_tokens *
budget_scale for the largest member L, member i alone costs F_i A_i with A_i = T_L * N_i / N_L (or its `tokens` *
budget_scale):
    scratch     trains A_i tokens (the independent baseline: every row is scratch)
    grow(j)     trains t_i = (F_i A_i - F_j A_j) / F_i tokens, so the cumulative *student* cost of a grown lineage
                equals training its last member alone (the progressive family costs what its largest member does)
    prune(j)    the pruned rows that read member j share budget.distill_share of j's cost F_j A_j, in proportion to
                their own cost alone (F_k A_k), and j (when it trains from scratch) keeps the rest: it trains
                (1 - distill_share) A_j tokens. The pruned family therefore costs what its largest member alone does,
                like the progressive one, and the two compare at equal FLOPs. Each pruned row's FLOPs pay for its
                own training and its teacher's forwards, so a distilled row trains F / (F_k + teacher forward) tokens.
A row with a distillation teacher also pays the teacher's forward FLOPs while the KL term is active (all of the
stage, or the decaying consistency fraction): `StageBudget.train_flops` counts them, so a progressive family with
consistency costs more than its largest member alone by exactly those FLOPs.
A member's `tokens` (> 0) replaces its A_i: a scratch row trains it, a grow row's stage trains (F_i A_i - F_j A_j)
/ F_i tokens with the overridden A_i (and A_j), i.e. the override sets the member's cost-equivalent total.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxgrow import config as config_lib
from jaxgrow.family import transitions as transitions_lib
from jaxgrow.model import flops, layout
from jaxgrow.train import schedules


@dataclasses.dataclass(frozen=True)
class StageBudget:
    index: int               # the stage's position in the transition table (its training order)
    name: str                # the member it trains
    model: Any
    params: int
    non_embedding_params: int
    train_flops_per_token: float
    tokens: int              # tokens actually trained in this stage (steps * tokens_per_step)
    steps: int
    teacher_forward_flops_per_token: float
    teacher_active_steps: int
    train_flops: float       # this stage: student training + teacher forwards
    transition: transitions_lib.Transition | None = None  # how the stage starts and what it minimises
    position: int = -1       # the member's position in the family (size order); -1: the stage index

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @property
    def family_position(self) -> int:
        return self.index if self.position < 0 else self.position


def tokens_per_step(cfg: Any) -> int:
    return cfg.data.batch_size * cfg.data.seq_len


def table(cfg: Any, mode: str | None = None, fam: list[config_lib.Member] | None = None,
          parent_teacher: str | None = None) -> list[transitions_lib.Transition]:
    """The run's transition table (`mode` given: that preset, ignoring config.transitions; parent_teacher: the
    parent checkpoint a run made by `prune` distils from)."""
    fam = fam if fam is not None else config_lib.members(cfg)
    names, sizes = [m.name for m in fam], [layout.non_embedding_param_count(m.model) for m in fam]
    if mode is None:
        return transitions_lib.table(cfg, names, sizes, parent_teacher)
    rows = transitions_lib.preset(mode, names, sizes, cfg)
    transitions_lib.check(rows, names, sizes)
    return rows


def budgets(cfg: Any, mode: str | None = None, teacher_models: dict[str, Any] | None = None,
            fam: list[config_lib.Member] | None = None, parent_teacher: str | None = None) -> list[StageBudget]:
    """Per-stage token/step/FLOP budgets of the transition table (default: the run's; `mode`: that preset), in
    stage order. teacher_models: model configs of checkpoint-path teachers (member teachers are looked up here)."""
    fam = fam if fam is not None else config_lib.members(cfg)
    rows = table(cfg, mode, fam, parent_teacher)
    seq, per_step = cfg.data.seq_len, tokens_per_step(cfg)
    by_name = {m.name: m for m in fam}
    n = {m.name: layout.non_embedding_param_count(m.model) for m in fam}
    f = {m.name: flops.train_flops_per_token(m.model, seq) for m in fam}
    largest = cfg.budget.largest_tokens * cfg.budget_scale
    n_largest = max(n.values())
    alone = {m.name: m.tokens * cfg.budget_scale if m.tokens > 0 else largest * n[m.name] / n_largest for m in fam}
    share = float(cfg.budget.get("distill_share", 0.2))
    pruned_from: dict[str, list[str]] = {}
    for r in rows:
        if r.init == "prune":
            pruned_from.setdefault(r.source, []).append(r.member)
    out = []
    for k, r in enumerate(rows):
        teacher_model = None
        if r.distils:
            teacher_model = (by_name[r.teacher].model if r.teacher in by_name
                             else (teacher_models or {}).get(r.teacher))
        teacher_fwd = flops.forward_flops_per_token(teacher_model, seq) if teacher_model is not None else 0.0
        tokens = _stage_tokens(r, alone, f, share, pruned_from, teacher_fwd)
        if tokens <= 0:
            raise config_lib.ConfigError(
                f"members.{r.member}: the paper's cost rule leaves no tokens for this stage ({r.describe()}: member "
                f"{r.member} is not larger in cost than {r.source}); give it a `tokens` budget")
        steps = max(1, round(tokens / per_step))
        active = 0
        if teacher_fwd:
            active = steps if not r.decay_fraction else min(steps, max(1, int(round(r.decay_fraction * steps))))
        m = by_name[r.member]
        out.append(StageBudget(
            index=k, name=r.member, model=m.model, params=layout.param_count(m.model), non_embedding_params=n[r.member],
            train_flops_per_token=f[r.member], tokens=steps * per_step, steps=steps,
            teacher_forward_flops_per_token=teacher_fwd, teacher_active_steps=active,
            train_flops=steps * per_step * f[r.member] + active * per_step * teacher_fwd, transition=r,
            position=m.position))
    return out


def _stage_tokens(r: transitions_lib.Transition, alone: dict, f: dict, share: float, pruned_from: dict,
                  teacher_fwd: float) -> float:
    """Tokens of one row under the paper's cost rule (module docstring)."""
    if r.init == "grow":
        return (f[r.member] * alone[r.member] - f[r.source] * alone[r.source]) / f[r.member]
    if r.init == "prune":
        siblings = pruned_from[r.source]
        pool = share * f[r.source] * alone[r.source]
        mine = pool * f[r.member] * alone[r.member] / sum(f[s] * alone[s] for s in siblings)
        return mine / (f[r.member] + teacher_fwd)
    if r.member in pruned_from:  # a scratch member the pruned rows are cut from pays their budget
        return (1.0 - share) * alone[r.member]
    return alone[r.member]


def lr_schedule(cfg: Any, stage: StageBudget):
    lr = cfg.lr
    return schedules.make_lr_schedule(
        stage.non_embedding_params, stage.steps, rule=lr.rule, warmup_steps=int(lr.warmup_fraction * stage.steps),
        decay=lr.decay, min_lr_ratio=lr.min_lr_ratio, wsd_decay_fraction=lr.wsd_decay_fraction, peak=lr.peak,
        n_ref=lr.n_ref, alpha=lr.alpha, table=lr.table)
