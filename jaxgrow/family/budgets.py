"""Per-stage budgets: tokens, steps and FLOPs of every member, and each stage's LR schedule.

The paper's cost rule (`budget.rule = "paper"`): with N_i the non-embedding parameters and F_i
the train FLOPs per token of member i, and T_L = budget.largest_tokens * budget_scale:
    independent: member i trains from scratch on T_i = T_L * N_i / N_L tokens
    progressive: stage 1 trains member 1 on T_1 tokens; stage k > 1 trains the expanded member k
                 on t_k = (F_k T_k - F_{k-1} T_{k-1}) / F_k tokens, so the cumulative *student*
                 cost after stage k equals training member k alone on T_k. With consistency
                 training (consistency.weight > 0) each stage also pays the frozen teacher's
                 forward passes while it is active, so the family then costs more than the
                 largest member alone by exactly those teacher FLOPs (`StageBudget.train_flops`
                 counts them).
A member's `tokens` (> 0) replaces its T_i (times budget_scale): in independent mode that is what
it trains on; in progressive mode stage k still trains (F_k T_k - F_{k-1} T_{k-1}) / F_k tokens
with the overridden T_k (and T_{k-1}), i.e. the override sets the member's cost-equivalent total,
not the tokens of its stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxgrow import config as config_lib
from jaxgrow.model import flops, layout
from jaxgrow.train import schedules


@dataclasses.dataclass(frozen=True)
class StageBudget:
    index: int
    name: str
    model: Any
    params: int
    non_embedding_params: int
    train_flops_per_token: float
    tokens: int              # tokens actually trained in this stage (steps * tokens_per_step)
    steps: int
    teacher_forward_flops_per_token: float
    teacher_active_steps: int
    train_flops: float       # this stage: student training + teacher forwards

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d


def tokens_per_step(cfg: Any) -> int:
    return cfg.data.batch_size * cfg.data.seq_len


def budgets(cfg: Any, mode: str | None = None) -> list[StageBudget]:
    """Per-stage token/step/FLOP budgets for `mode` (default: cfg.mode). See the module docstring."""
    mode = mode or cfg.mode
    fam = config_lib.members(cfg)
    seq = cfg.data.seq_len
    per_step = tokens_per_step(cfg)
    n = [layout.non_embedding_param_count(m.model) for m in fam]
    f = [flops.train_flops_per_token(m.model, seq) for m in fam]
    largest = cfg.budget.largest_tokens * cfg.budget_scale
    alone = [m.tokens * cfg.budget_scale if m.tokens > 0 else largest * n[i] / n[-1] for i, m in enumerate(fam)]
    out = []
    for i, m in enumerate(fam):
        if mode == "independent" or i == 0:
            tokens = alone[i]
        else:
            tokens = (f[i] * alone[i] - f[i - 1] * alone[i - 1]) / f[i]
            if tokens <= 0:
                raise config_lib.ConfigError(
                    f"members.{m.name}: the paper's cost rule leaves no tokens for this stage "
                    f"(member {m.name} is not larger in cost than {fam[i - 1].name}); give it a `tokens` budget")
        steps = max(1, round(tokens / per_step))
        teacher_fwd, active = 0.0, 0
        if mode == "progressive" and i > 0 and cfg.consistency.weight > 0:
            teacher_fwd = flops.forward_flops_per_token(fam[i - 1].model, seq)
            active = min(steps, max(1, int(round(cfg.consistency.fraction * steps))))
        out.append(StageBudget(
            index=i, name=m.name, model=m.model, params=layout.param_count(m.model), non_embedding_params=n[i],
            train_flops_per_token=f[i], tokens=steps * per_step, steps=steps,
            teacher_forward_flops_per_token=teacher_fwd, teacher_active_steps=active,
            train_flops=steps * per_step * f[i] + active * per_step * teacher_fwd))
    return out


def lr_schedule(cfg: Any, stage: StageBudget):
    lr = cfg.lr
    return schedules.make_lr_schedule(
        stage.non_embedding_params, stage.steps, rule=lr.rule, warmup_steps=int(lr.warmup_fraction * stage.steps),
        decay=lr.decay, min_lr_ratio=lr.min_lr_ratio, wsd_decay_fraction=lr.wsd_decay_fraction, peak=lr.peak,
        n_ref=lr.n_ref, alpha=lr.alpha, table=lr.table)
