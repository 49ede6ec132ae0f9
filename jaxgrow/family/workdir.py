"""The run directory: where each stage and member lives, its saved config, and restoring members.

    config.json            the resolved config (drift-checked on every rerun)
    budgets.json           each stage's budget, recorded when the run first starts it
    tokenizer.json, data/  tokenizer and token caches (identical for every stage)
    stages/<k>-<name>/     rolling checkpoints of stage k (orbax; `checkpoint.keep` of them)
    members/<name>/        each member's final checkpoint (never deleted)
    metrics.jsonl, tb/     training metrics
    report.json, report.md, *.png

The workdir may be local or remote (gs://, s3://): every path here is built with `storage.join`
(an epath.Path; pathlib would turn `gs://` into `gs:/`) and written through `storage`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
from etils import epath

from jaxgrow import config as config_lib, storage
from jaxgrow.family.budgets import StageBudget, budgets
from jaxgrow.model import sharding
from jaxgrow.train import checkpoint, trainer


log = logging.getLogger("jaxgrow")


BUDGETS_FILE = "budgets.json"


def stage_dir(workdir: Path, stage: StageBudget) -> epath.Path:
    return storage.join(workdir, "stages", f"{stage.index}-{stage.name}")


def member_dir(workdir: Path, name: str) -> epath.Path:
    return storage.join(workdir, "members", name)


def check_writable(path: Path | epath.Path, flag: str = "--workdir") -> None:
    """Raises InputError if `path` cannot be created or written (creates nothing)."""
    if storage.is_remote(path):
        storage.check_bucket(path, flag)
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise config_lib.InputError(f"{flag}={path} exists and is not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise config_lib.ConfigError(f"{flag}={path} is not writable ({probe} is not a writable directory); "
                                     "choose a directory you can write to")


def check_workdir_writable(workdir: Path) -> None:
    check_writable(workdir, "--workdir")


def check_drift(cfg: Any, workdir: Path) -> None:
    saved_path = storage.join(workdir, "config.json")
    if not saved_path.exists() or cfg.allow_config_change:
        return
    saved = json.loads(saved_path.read_text())
    changed = config_lib.drift(saved, json.loads(cfg.to_json()))
    if changed:
        raise config_lib.ConfigError(
            f"--workdir={workdir} holds a run with a different config; differing keys: {', '.join(changed)} "
            "(rerun with the saved config, or pass --config.allow_config_change=True)")


def write_config(cfg: Any, workdir: Path) -> None:
    if jax.process_index() == 0:
        storage.atomic_write_text(storage.join(workdir, "config.json"), cfg.to_json(indent=2))


# ----------------------------------------------------------------------------------------------
# Budgets as run: a resumed run may change budget keys (they are resumable), so every stage's
# budget is recorded when the stage starts, and reports read finished stages from that record.


def recorded_budgets(workdir: Path) -> dict[str, dict]:
    """member name -> the budget it was started with (StageBudget.to_json), {} if none recorded."""
    path = storage.join(workdir, BUDGETS_FILE)
    return json.loads(path.read_text()) if path.exists() else {}


def record_budget(workdir: Path, stage: StageBudget) -> None:
    """Records `stage`'s budget unless one is already recorded for it (the first start wins)."""
    if jax.process_index() != 0:
        return
    recorded = recorded_budgets(workdir)
    if stage.name not in recorded:
        recorded[stage.name] = stage.to_json()
        storage.atomic_write_text(storage.join(workdir, BUDGETS_FILE), json.dumps(recorded, indent=2))


def apply_recorded(stages: list[StageBudget], workdir: Path) -> list[StageBudget]:
    """`stages` with each recorded stage replaced by its record: a stage that already started keeps
    the steps, tokens and FLOPs it started with even if budget keys changed since."""
    recorded = recorded_budgets(workdir)
    out = []
    for s in stages:
        r = recorded.get(s.name)
        if r is not None and r["index"] == s.index:
            fields = {k: v for k, v in r.items() if k != "model"}
            s = StageBudget(model=s.model, **fields)
        out.append(s)
    return out


def load_setup_for_eval(workdir: Path) -> tuple[Any, list[StageBudget]]:
    """The saved config and stage budgets (as recorded when each stage started) of an existing workdir."""
    path = storage.join(workdir, "config.json")
    if not path.exists():
        raise config_lib.ConfigError(f"--workdir={workdir} holds no run (no config.json); train first")
    cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
    return cfg, apply_recorded(budgets(cfg), workdir)


# ----------------------------------------------------------------------------------------------
# Members


def select_members(workdir: Path, member: str | None) -> tuple[Any, list[StageBudget]]:
    """(run config, [stage]) for `member` (must exist and be finished), or with member=None every
    finished member (unfinished ones are skipped with a warning). `sample` and `export` both use it."""
    cfg, stages = load_setup_for_eval(workdir)
    names = [s.name for s in stages]
    if member is not None:
        if member not in names:
            raise config_lib.InputError(f"--member={member} is not a member of {workdir}; members: {', '.join(names)}")
        stages = [s for s in stages if s.name == member]
        if not checkpoint.has_checkpoint(member_dir(workdir, member)):
            raise config_lib.InputError(f"--member={member}: {member_dir(workdir, member)} holds no checkpoint; "
                                        "train first")
        return cfg, stages
    done = [s for s in stages if checkpoint.has_checkpoint(member_dir(workdir, s.name))]
    if not done:
        raise config_lib.InputError(f"--workdir={workdir} holds no finished member; train the family first")
    for s in stages:
        if s not in done:
            log.warning("member %s is not finished; skipped", s.name)
    return cfg, done


def restore_member(workdir: Path, stage: StageBudget, optimizer, mesh, with_opt: bool = True):
    """(params, opt_state | None, meta) of a finished member, restored onto its shardings."""
    abstract = trainer.abstract_state(stage.model, optimizer, mesh)
    ckpts = checkpoint.Checkpoints(member_dir(workdir, stage.name))
    step = ckpts.latest_step()
    params, opt_state, meta = ckpts.restore(step, abstract.params, abstract.opt_state if with_opt else None)
    ckpts.close()
    return params, opt_state, meta


def member_params(workdir: Path, stage: StageBudget, mesh=None) -> dict:
    """Final params of a member, restored onto `mesh` (default: sharding.eval_mesh(), all devices)."""
    if not checkpoint.has_checkpoint(member_dir(workdir, stage.name)):
        raise config_lib.ConfigError(f"{member_dir(workdir, stage.name)} holds no checkpoint; train the family first")
    mesh = mesh or sharding.eval_mesh()
    optimizer = trainer.make_optimizer(config_lib.base_config().optimizer, stage.model)  # only shapes are used
    params, _, _ = restore_member(workdir, stage, optimizer, mesh, with_opt=False)
    return params
