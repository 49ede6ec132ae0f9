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

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
from etils import epath

from jaxgrow import config as config_lib, storage
from jaxgrow.family import run_plan
from jaxgrow.family.budgets import StageBudget
from jaxgrow.model import sharding
from jaxgrow.train import checkpoint, trainer


log = logging.getLogger("jaxgrow")


BUDGETS_FILE = "budgets.json"


def stage_dir(workdir: Path, stage: StageBudget) -> epath.Path:
    return storage.join(workdir, "stages", f"{stage.index}-{stage.name}")


def member_dir(workdir: Path, name: str) -> epath.Path:
    return storage.join(workdir, "members", name)


def check_writable(path: Path | epath.Path, flag: str = "--workdir") -> None:
    """Raises InputError if `path` cannot be created or written (leaves nothing behind)."""
    storage.check_writable(path, flag)


def check_workdir_writable(workdir: Path) -> None:
    check_writable(workdir, "--workdir")


def read_json_record(path: Any, what_to_do: str) -> Any:
    """A run's JSON record, or InputError naming the file and what to do when it is empty, truncated or not JSON."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise config_lib.InputError(f"{path} is damaged (empty, truncated or not JSON); {what_to_do}") from None


def check_drift(cfg: Any, workdir: Path) -> None:
    saved_path = storage.join(workdir, "config.json")
    if not saved_path.exists() or cfg.allow_config_change:
        return  # (allow_config_change: a damaged config.json is rewritten from --config)
    saved = read_json_record(saved_path, "restore it, or rerun with --config.allow_config_change=True to rewrite it "
                                         "from --config")
    if not isinstance(saved, dict):
        raise config_lib.InputError(f"{saved_path} holds a {type(saved).__name__}, not a run config; restore it, or "
                                    "rerun with --config.allow_config_change=True to rewrite it from --config")
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


class DamagedRecord(ValueError):
    """budgets.json cannot be read."""


def recorded_budgets(workdir: Path) -> dict[str, dict]:
    """member name -> the budget it was started with (StageBudget.to_json), {} if none recorded. DamagedRecord when
    the file is empty, truncated or not a JSON object."""
    path = storage.join(workdir, BUDGETS_FILE)
    if not path.exists():
        return {}
    try:
        recorded = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise DamagedRecord(str(path)) from None
    if not isinstance(recorded, dict) or not all(isinstance(v, dict) for v in recorded.values()):
        raise DamagedRecord(str(path))
    return recorded


def rebuild_budgets(stages: list[StageBudget], workdir: Path) -> dict[str, dict]:
    """A damaged budgets.json rebuilt (in memory) from the plan, checked against what the checkpoints say: every
    finished member must have trained its stage's steps under the current config (else the budget keys changed
    since, and the record cannot be rebuilt: one line naming the file). `save_rebuilt_budgets` writes it once a run
    has validated its inputs."""
    path = storage.join(workdir, BUDGETS_FILE)
    for s in stages:
        directory = member_dir(workdir, s.name)
        if checkpoint.has_checkpoint(directory):
            ckpts = checkpoint.Checkpoints(directory)
            try:
                step = ckpts.latest_step()
            finally:
                ckpts.close()
            if step != s.steps:
                raise config_lib.InputError(
                    f"{path} is damaged, and member {s.name} trained {step} steps where the config now gives its "
                    f"stage {s.steps}: the budget keys changed since it started; restore {path}, or rerun with the "
                    "budget keys the run started with")
    return {s.name: s.to_json() for s in stages if checkpoint.has_checkpoint(member_dir(workdir, s.name))
            or checkpoint.has_checkpoint(stage_dir(workdir, s))}


def save_rebuilt_budgets(stages: list[StageBudget], workdir: Path) -> None:
    """After validation: a damaged budgets.json is kept as budgets.json.damaged and replaced by its rebuilt record."""
    path = storage.join(workdir, BUDGETS_FILE)
    try:
        recorded_budgets(workdir)
        return
    except DamagedRecord:
        pass
    rebuilt = rebuild_budgets(stages, workdir)
    if jax.process_index() == 0:
        storage.copy_file(path, storage.join(workdir, BUDGETS_FILE + ".damaged"))
        storage.atomic_write_text(path, json.dumps(rebuilt, indent=2))
    log.warning("%s was damaged; rebuilt from the config and checked against the member checkpoints (the damaged "
                "file is kept as %s.damaged)", path, BUDGETS_FILE)


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
    try:
        recorded = recorded_budgets(workdir)
    except DamagedRecord:
        recorded = rebuild_budgets(stages, workdir)
    out = []
    for s in stages:
        r = recorded.get(s.name)
        if r is not None and r["index"] == s.index:  # the numbers as recorded; the row and position from the plan
            fields = {k: v for k, v in r.items() if k not in ("model", "transition", "position")}
            s = StageBudget(model=s.model, transition=s.transition, position=s.position, **fields)
        out.append(s)
    return out


def read_run_config(workdir: Path, flag: str = "--workdir") -> Any:
    """The saved config of an existing workdir, checked: a missing, unreadable, non-JSON or keyless config.json is
    one line naming the file."""
    path = storage.join(workdir, "config.json")
    if not path.exists():
        raise config_lib.ConfigError(f"{flag}={workdir} holds no run (no config.json); train first")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise config_lib.ConfigError(f"{path} is not valid JSON ({type(e).__name__}); the run's config is damaged: "
                                     "restore it, or rerun train with its --config and --config.allow_config_change=True"
                                     ) from None
    missing = [k for k in ("model", "members", "data", "mode", "budget", "lr") if not isinstance(saved, dict)
               or k not in saved]
    if missing:
        raise config_lib.ConfigError(f"{path} lacks {missing}; not a jaxgrow run config (rerun train with its --config "
                                     "and --config.allow_config_change=True)")
    cfg = config_lib.base_config()
    try:
        cfg.update(ml_collections.ConfigDict(saved))
        config_lib.validate(cfg)
    except (config_lib.ConfigError, TypeError, KeyError, AttributeError) as e:
        raise config_lib.ConfigError(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return cfg


def load_setup_for_eval(workdir: Path) -> tuple[Any, list[StageBudget]]:
    """The saved config and stage budgets (training order, as recorded when each stage started) of an existing
    workdir."""
    cfg = read_run_config(workdir)
    return cfg, apply_recorded(list(run_plan.resolve(cfg, lineage=read_lineage(workdir)).stages), workdir)


# ----------------------------------------------------------------------------------------------
# Lineage: a workdir made by `expand` records the run it grew from (lineage.json), written first (incomplete) and
# completed last, so an interrupted expand is detected, and reports count the parent's compute and data.

LINEAGE_FILE = "lineage.json"


def read_lineage(workdir: Path) -> dict | None:
    path = storage.join(workdir, LINEAGE_FILE)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise config_lib.InputError(f"{path} is damaged (not JSON); rerun the expand command that made "
                                    f"{workdir}") from None


def write_lineage(workdir: Path, lineage: dict, complete: bool) -> None:
    if jax.process_index() == 0:
        storage.atomic_write_text(storage.join(workdir, LINEAGE_FILE), json.dumps(dict(lineage, complete=complete),
                                                                                  indent=2))


def check_expand_finished(workdir: Path) -> None:
    """A half-expanded workdir must not train from a random init: its expand is finished by rerunning it."""
    lineage = read_lineage(workdir)
    if lineage is not None and not lineage.get("complete"):
        raise config_lib.InputError(f"--workdir={workdir} holds an interrupted expand of "
                                    f"{lineage['parent']['checkpoint']}; finish it with the same command: "
                                    f"{lineage.get('command', 'jaxgrow expand --config ... --from ... --workdir ...')}")


def parent_lineage(from_dir: Path, step: int, meta: dict, cfg: Any) -> dict:
    """What `expand --from from_dir` grows from: the parent workdir, member, step, the train FLOPs and tokens that
    produced that checkpoint (its stages in the parent run, plus the parent's own lineage), and the data it saw
    (tokenizer hash, data config, windows consumed), with a key that identifies this expansion for resuming it."""
    from_dir = storage.as_path(str(from_dir), "--from")
    parent = from_dir.parent.parent  # <run>/members/<name> or <run>/stages/<k>-<name>
    k, member = int(meta.get("stage", 0)), meta.get("member")
    flops = tokens = 0.0
    parent_cfg = None
    if storage.join(parent, "config.json").exists():
        parent_cfg = read_run_config(parent, "--from")
        try:
            recorded = recorded_budgets(parent)
        except DamagedRecord:
            raise config_lib.InputError(f"{storage.join(parent, BUDGETS_FILE)} is damaged; rerun train on {parent} "
                                        "(it rebuilds the record) before growing or pruning its members") from None
        names = [m.name for m in config_lib.members(parent_cfg)]
        first = k if parent_cfg.mode == "independent" else 0
        for i in range(first, k + 1):
            r = recorded.get(names[i]) if i < len(names) else None
            if r is None:
                continue
            share = 1.0 if i < k else min(1.0, step / max(r["steps"], 1))  # a mid-stage checkpoint: its share
            flops += share * r["train_flops"]
            tokens += share * r["tokens"]
        grand = read_lineage(parent)
        if grand is not None and parent_cfg.mode == "progressive":
            flops += grand["train_flops"]
            tokens += grand["tokens"]
    tok_path = storage.join(parent, "tokenizer.json")
    data_state = meta.get("data_state") or {}
    batch = parent_cfg.data.batch_size if parent_cfg is not None else cfg.data.batch_size
    key = hashlib.sha256(json.dumps({"from": str(from_dir), "step": int(step), "config": json.loads(cfg.to_json())},
                                    sort_keys=True).encode()).hexdigest()
    return {
        "key": key,
        "parent": {"workdir": str(parent), "checkpoint": str(from_dir), "member": member, "stage": k, "step": int(step),
                   "mode": parent_cfg.mode if parent_cfg is not None else None},
        "train_flops": float(flops), "tokens": float(tokens),
        "data": {"tokenizer_sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest() if tok_path.exists() else None,
                 "data_config": parent_cfg.data.to_dict() if parent_cfg is not None else None,
                 "windows_consumed": int(data_state.get("next_index", 0)) * int(batch),
                 "seq_len": parent_cfg.data.seq_len if parent_cfg is not None else None},
        "command": None,
    }


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
        if not (checkpoint.has_checkpoint(member_dir(workdir, member)) or repair_member(workdir, stages[0])):
            raise config_lib.InputError(f"--member={member}: {member_dir(workdir, member)} holds no checkpoint; "
                                        "train first")
        return cfg, stages
    done = [s for s in stages if checkpoint.has_checkpoint(member_dir(workdir, s.name)) or repair_member(workdir, s)]
    if not done:
        raise config_lib.InputError(f"--workdir={workdir} holds no finished member; train the family first")
    for s in stages:
        if s not in done:
            log.warning("member %s is not finished; skipped", s.name)
    return cfg, done


def repair_member(workdir: Path, stage: StageBudget) -> bool:
    """A member whose checkpoint lost an item (a deleted `meta`, say) is set aside to corrupt/<step> and rebuilt from
    its stage's final checkpoint (the same state, saved at the same step), as training does; whether the member now
    has a checkpoint. A member that never finished (no step directory at all) is left alone."""
    directory = member_dir(workdir, stage.name)
    if storage.is_remote(directory) or not Path(directory).is_dir():
        return False
    if not any(p.is_dir() and p.name.isdigit() for p in Path(directory).iterdir()):
        return False
    checkpoint.Checkpoints(directory).close()  # sets aside a step directory that lacks an item (corrupt/<step>)
    final = stage_dir(workdir, stage)
    if checkpoint.has_checkpoint(directory) or not checkpoint.step_is_committed(final, stage.steps):
        return checkpoint.has_checkpoint(directory)
    log.warning("member checkpoint %s was incomplete; rebuilt from %s/%d", directory, final, stage.steps)
    checkpoint.copy_step(final, directory, stage.steps)
    return checkpoint.has_checkpoint(directory)


def restore_member(workdir: Path, stage: StageBudget, optimizer, mesh, with_opt: bool = True):
    """(params, opt_state | None, meta) of a finished member, restored onto its shardings.

    A damaged member checkpoint (checksums, unreadable files) is quarantined to members/<name>/corrupt/<step> and
    rebuilt from the stage's final checkpoint (stages/<k>-<name>/<steps>: the same state, saved at the same step);
    when that is gone too, one line says which path is damaged and how to retrain it."""
    abstract = trainer.abstract_state(stage.model, optimizer, mesh)
    directory = member_dir(workdir, stage.name)
    ckpts = checkpoint.Checkpoints(directory)
    step = ckpts.latest_step()
    try:
        return ckpts.restore(step, abstract.params, abstract.opt_state if with_opt else None)
    except checkpoint.CorruptCheckpoint as e:
        ckpts.quarantine(step)
        final = stage_dir(workdir, stage)
        if step != stage.steps or not checkpoint.step_is_committed(final, stage.steps):
            raise config_lib.InputError(
                f"{directory}/{step} is damaged ({str(e)[:80]}); moved to corrupt/{step}, and stage {stage.index}'s "
                f"final checkpoint {final}/{stage.steps} is not there to rebuild it from: rerun train with the run's "
                f"config to retrain {stage.name} from its last good stage checkpoint") from None
        log.warning("member checkpoint %s/%d is damaged (%s); moved to %s/corrupt/%d and rebuilt from %s/%d", directory,
                    step, e, directory, step, final, stage.steps)
        checkpoint.copy_step(final, directory, stage.steps)
    finally:
        ckpts.close()
    rebuilt = checkpoint.Checkpoints(directory)
    try:
        return rebuilt.restore(stage.steps, abstract.params, abstract.opt_state if with_opt else None)
    finally:
        rebuilt.close()


def checkpoint_params(directory: Any, model_cfg: Any, mesh) -> dict:
    """The params of the newest checkpoint in `directory` (a members/<name> or stages/<k>-<name> dir of any run, e.g.
    a distillation teacher given by path), restored onto `mesh` with `model_cfg`'s layout."""
    optimizer = trainer.make_optimizer(config_lib.base_config().optimizer, model_cfg)  # only shapes are used
    abstract = trainer.abstract_state(model_cfg, optimizer, mesh)
    ckpts = checkpoint.Checkpoints(directory)
    try:
        params, _, _ = ckpts.restore(ckpts.latest_step(), abstract.params, None)
    finally:
        ckpts.close()
    return params


def member_params(workdir: Path, stage: StageBudget, mesh=None) -> dict:
    """Final params of a member, restored onto `mesh` (default: sharding.eval_mesh(), all devices)."""
    if not checkpoint.has_checkpoint(member_dir(workdir, stage.name)):
        raise config_lib.ConfigError(f"{member_dir(workdir, stage.name)} holds no checkpoint; train the family first")
    mesh = mesh or sharding.eval_mesh()
    optimizer = trainer.make_optimizer(config_lib.base_config().optimizer, stage.model)  # only shapes are used
    params, _, _ = restore_member(workdir, stage, optimizer, mesh, with_opt=False)
    return params
