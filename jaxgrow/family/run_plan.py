"""The run plan: one validation pass over a run config, resolved into what everything downstream reads.

    plan = resolve(cfg)       # raises ConfigError / InputError (one line naming the field) on bad input

A RunPlan holds the members (family order), the stages in training order with each one's transition and budget
(the paper's cost rule over the transition table), and the model configs of checkpoint-path distillation teachers.
The pipeline, `plan`, `expand`, `prune`, reports and lineage read it instead of re-deriving members or budgets from
the config. The data and tokenizer are resolved against the files when a run prepares (pipeline.prepare adds the
corpus to its Setup); `resolve` itself reads no data.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections

from jaxgrow import config as config_lib, storage
from jaxgrow.family import budgets as budgets_lib, checks, transitions as transitions_lib
from jaxgrow.family.budgets import StageBudget


@dataclasses.dataclass(frozen=True)
class RunPlan:
    cfg: Any                                   # the validated run config
    members: tuple[config_lib.Member, ...]     # family order (size order: what reports and KL pairs read)
    stages: tuple[StageBudget, ...]            # training order, each with its transition and budget
    teacher_models: Mapping[str, Any]          # checkpoint-path teachers -> their model configs

    @property
    def transitions(self) -> tuple[transitions_lib.Transition, ...]:
        return tuple(s.transition for s in self.stages)

    def stage(self, member: str) -> StageBudget:
        """The stage that trains `member`."""
        for s in self.stages:
            if s.name == member:
                return s
        raise KeyError(member)

    def family_order(self) -> list[StageBudget]:
        """The stages sorted by their member's size, then its position in the family: what reports list and what
        adjacent-member KL and draft acceptance pair up (a preset family: the position order)."""
        return sorted(self.stages, key=lambda s: (s.non_embedding_params, s.family_position))

    def with_stages(self, stages: list[StageBudget]) -> "RunPlan":
        return dataclasses.replace(self, stages=tuple(stages))

    def teacher_model(self, stage: StageBudget) -> Any:
        """The model config of the stage's distillation teacher (a member's, or a checkpoint path's)."""
        teacher = stage.transition.teacher
        return (self.teacher_models[teacher] if transitions_lib.teacher_is_path(teacher)
                else self.stage(teacher).model)

    def distill(self, stage: StageBudget):
        """The stage's distillation term (train.trainer.Distill) from its row, or None for cross-entropy alone."""
        from jaxgrow.train import trainer  # noqa: PLC0415

        row = stage.transition
        if row is None or not row.distils:
            return None
        d = self.cfg.distill
        return trainer.Distill(self.teacher_model(stage), row.weight, stage.teacher_active_steps,
                               temperature=float(d.temperature), ce_weight=float(d.ce_weight),
                               decay_steps=stage.teacher_active_steps if row.decay_fraction else 0)


def resolve(cfg: Any, mode: str | None = None, lineage: dict | None = None) -> RunPlan:
    """Validates `cfg` (schema, types, LR rules, transitions, contexts) and resolves members, transitions and budgets
    (`mode`: that preset's table instead of the run's, e.g. the independent baseline). lineage: the workdir's
    lineage.json; a run made by `prune` distils its first stage from the parent checkpoint by default."""
    fam = checks.validate(cfg)
    parent = lineage["parent"]["checkpoint"] if lineage and lineage.get("kind") == "prune" and mode is None else None
    rows = budgets_lib.table(cfg, mode, fam, parent)
    teachers = teacher_models(rows, cfg)
    stages = budgets_lib.budgets(cfg, mode, teacher_models=teachers, fam=fam, parent_teacher=parent)
    return RunPlan(cfg, tuple(fam), tuple(stages), teachers)


def teacher_models(rows: list[transitions_lib.Transition], cfg: Any) -> dict[str, Any]:
    """Model configs of the rows' checkpoint-path teachers, from each checkpoint's meta; a path without a
    checkpoint or with another vocabulary is refused with one line."""
    from jaxgrow.train import checkpoint  # noqa: PLC0415

    out: dict[str, Any] = {}
    for row in rows:
        if not row.distils or not transitions_lib.teacher_is_path(row.teacher) or row.teacher in out:
            continue
        path = storage.as_path(row.teacher, "distill.teacher")
        if not checkpoint.has_checkpoint(path):
            raise config_lib.InputError(f"distill.teacher={row.teacher} holds no checkpoint (expected a members/<name> "
                                        "or stages/<k>-<name> directory of a jaxgrow run)")
        ckpts = checkpoint.Checkpoints(path)
        try:
            model = ml_collections.ConfigDict(ckpts.read_meta(ckpts.latest_step())["model"])
        finally:
            ckpts.close()
        student = config_lib.members(cfg)[0].model
        if model.vocab_size != student.vocab_size:
            raise config_lib.InputError(f"distill.teacher={row.teacher}: its vocab_size={model.vocab_size} differs "
                                        f"from the family's model.vocab_size={student.vocab_size}; a teacher must "
                                        "share the students' tokenizer")
        out[row.teacher] = model
    return out
