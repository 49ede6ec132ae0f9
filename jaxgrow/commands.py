"""Workdir-level commands besides training: grow a checkpoint into a new run, score members on tasks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections

from jaxgrow import checkpoint, config as config_lib, data, evaluate, expand, family, sharding, train


def expand_checkpoint(cfg: Any, from_dir: Path, workdir: Path) -> Path:
    """Grows the newest checkpoint in `from_dir` into the config's first member and writes it as
    step 0 of stage 0 in `workdir`, so `train --config CFG --workdir workdir` continues from it
    (same data stream position, the source run's tokenizer)."""
    fam = config_lib.validate(cfg)
    dst = fam[0]
    if not checkpoint.has_checkpoint(from_dir):
        raise config_lib.InputError(f"--from={from_dir} holds no checkpoint (expected an orbax step directory with "
                                    "params/opt_state/meta, e.g. W/members/<name> or W/stages/<k>-<name>)")
    family.check_workdir_writable(workdir)
    stages = family.budgets(cfg)
    out_dir = family.stage_dir(workdir, stages[0])
    if checkpoint.has_checkpoint(out_dir) or Path(workdir, "config.json").exists():
        raise config_lib.InputError(f"--workdir={workdir} already holds a run; give an empty or new directory")
    src_ckpts = checkpoint.Checkpoints(from_dir)
    step = src_ckpts.latest_step()
    meta = src_ckpts.read_meta(step)
    src_model = ml_collections.ConfigDict(meta["model"])
    e = cfg.expansion
    try:
        expand.check(src_model, dst.model, e.method, e.depth, e.depth_position)
    except ValueError as err:
        raise config_lib.InputError(f"--from={from_dir} -> --config: {err}") from None
    if src_model.vocab_size != dst.model.vocab_size:
        raise config_lib.InputError(f"model.vocab_size={dst.model.vocab_size} differs from the checkpoint's {src_model.vocab_size}")
    tokenizer = Path(from_dir).resolve().parent.parent / "tokenizer.json"

    mesh = sharding.make_mesh(cfg.mesh)
    optimizer = train.make_optimizer(cfg.optimizer, dst.model)
    src_abstract = train.abstract_state(src_model, train.make_optimizer(cfg.optimizer, src_model), mesh)
    carry = e.opt_state == "carry"
    params, opt_state, _ = src_ckpts.restore(step, src_abstract.params, src_abstract.opt_state if carry else None)
    src_ckpts.close()
    new_params, new_opt = family.grow(cfg, src_model, dst.model, params, opt_state, optimizer, mesh,
                                      family.stage_key(cfg.seed, 0, 1))

    workdir.mkdir(parents=True, exist_ok=True)
    if tokenizer.exists() and not Path(workdir, "tokenizer.json").exists():
        shutil.copyfile(tokenizer, Path(workdir, "tokenizer.json"))
    family.write_config(cfg, workdir)
    ckpts = checkpoint.Checkpoints(out_dir, keep=cfg.checkpoint.keep)
    ckpts.save(0, new_params, new_opt, {"stage": 0, "member": dst.name, "mode": cfg.mode, "model": dst.model.to_dict(),
                                        "data_state": meta.get("data_state"), "nonfinite": 0,
                                        "expanded_from": str(from_dir)})
    ckpts.close()
    return out_dir


def evaluate_members(workdir: Path, task_files: list[str]) -> dict:
    """Held-out loss and multiple-choice accuracy (acc_norm) of every member; writes W/eval.json."""
    cfg, stages = family.load_setup_for_eval(workdir)
    items = {Path(f).stem: evaluate.load_tasks(f) for f in task_files}
    corpus = data.prepare(cfg.data, cfg.model.vocab_size, workdir)
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1, "dcn_data": 1}))
    host = data.eval_batches(corpus.eval, cfg.data.seq_len, cfg.data.batch_size, cfg.data.eval_batches)
    batches = [jax.device_put(b, sharding.batch_sharding(mesh)) for b in host]
    result: dict = {"convention": evaluate.__doc__.split("\n\n")[1].replace("\n", " "), "members": {}}
    with jax.set_mesh(mesh):
        for s in stages:
            if not checkpoint.has_checkpoint(family.member_dir(workdir, s.name)):
                continue
            params = family.member_params(workdir, s, mesh)
            entry = {"eval_loss": evaluate.eval_loss(params, s.model, batches), "tasks": {}}
            for name, task in items.items():
                entry["tasks"][name] = evaluate.score_tasks(params, s.model, corpus.tokenizer, task, cfg.data.seq_len)
            result["members"][s.name] = entry
    if not result["members"]:
        raise config_lib.InputError(f"--workdir={workdir} holds no finished member; train the family first")
    if jax.process_index() == 0:
        from jaxgrow import benchmarks  # noqa: PLC0415  (keep --suite results already in eval.json)

        merged = dict(benchmarks.merge_eval_json(workdir, result["members"]), convention=result["convention"])
        tmp = Path(workdir, "eval.json.tmp")
        tmp.write_text(json.dumps(merged, indent=2))
        os.replace(tmp, Path(workdir, "eval.json"))
    return result
