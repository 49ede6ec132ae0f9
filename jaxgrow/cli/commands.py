"""Workdir-level commands besides training: grow a checkpoint into a new run (`expand`), score
members on tasks (`evaluate`), export members to / import a run from Hugging Face (`export`,
`import`). Each validates its inputs before it writes anything."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections

from jaxgrow import config as config_lib, expand, storage
from jaxgrow.data import corpus as corpus_lib, pipeline, tokenizers as tokenizers_lib
from jaxgrow.data.formats import DataError
from jaxgrow.eval import evaluate, report
from jaxgrow.family import checks, lock, workdir as workdir_lib
from jaxgrow.family.budgets import budgets
from jaxgrow.family.growth import grow, stage_key
from jaxgrow.interop import export, hf
from jaxgrow.model import sharding
from jaxgrow.train import checkpoint, faults, trainer


log = logging.getLogger("jaxgrow")



def expand_checkpoint(cfg: Any, from_dir: Path, workdir: Path, command: str | None = None) -> Path:
    """Grows the newest checkpoint in `from_dir` into the config's first member and writes it as step 0 of stage 0
    in `workdir`, so `train --config CFG --workdir workdir` continues from it (same data stream position, the source
    run's tokenizer). W/lineage.json records the parent (its workdir, member, step, train FLOPs and tokens, data)
    first, marked incomplete, and is completed last: a killed expand is finished by rerunning the same command, and
    `train` refuses to start a half-expanded workdir from scratch."""
    fam = checks.validate(cfg)
    dst = fam[0]
    if not checkpoint.has_checkpoint(from_dir):
        raise config_lib.InputError(f"--from={from_dir} holds no checkpoint (expected an orbax step directory with "
                                    "params/opt_state/meta, e.g. W/members/<name> or W/stages/<k>-<name>)")
    workdir_lib.check_workdir_writable(workdir)
    stages = budgets(cfg)
    out_dir = workdir_lib.stage_dir(workdir, stages[0])
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
    lineage = dict(workdir_lib.parent_lineage(from_dir, step, meta, cfg), command=command)
    existing = workdir_lib.read_lineage(workdir)
    if existing is not None and existing["complete"] and existing["key"] == lineage["key"]:
        log.info("%s already holds this expansion (lineage.json); nothing to do", workdir)
        return out_dir
    if existing is None and (checkpoint.has_checkpoint(out_dir) or storage.join(workdir, "config.json").exists()):
        raise config_lib.InputError(f"--workdir={workdir} already holds a run; give an empty or new directory")
    if existing is not None and existing["key"] != lineage["key"]:
        raise config_lib.InputError(f"--workdir={workdir} holds {'an' if existing['complete'] else 'an interrupted'} "
                                    f"expansion of {existing['parent']['checkpoint']} with another config or source; "
                                    "rerun that expand, or give an empty or new directory")
    # the source run's tokenizer: <run>/tokenizer.json beside <run>/members/<name>
    tokenizer = storage.join(lineage["parent"]["workdir"], "tokenizer.json")

    mesh = sharding.make_mesh(cfg.mesh)
    optimizer = trainer.make_optimizer(cfg.optimizer, dst.model)
    src_abstract = trainer.abstract_state(src_model, trainer.make_optimizer(cfg.optimizer, src_model), mesh)
    carry = e.opt_state == "carry"
    params, opt_state, _ = src_ckpts.restore(step, src_abstract.params, src_abstract.opt_state if carry else None)
    src_ckpts.close()
    new_params, new_opt = grow(cfg, src_model, dst.model, params, opt_state, optimizer, mesh, stage_key(cfg.seed, 0, 1))

    lock.check_free(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with lock.held(workdir, command or "expand"):
        workdir_lib.write_lineage(workdir, lineage, complete=False)  # first: from here on, a kill is resumable
        storage.remove_tree(out_dir)  # a killed expand's partial step
        if tokenizer.exists():
            storage.copy_file(tokenizer, storage.join(workdir, "tokenizer.json"))
        workdir_lib.write_config(cfg, workdir)
        faults.point("expand_saving")
        ckpts = checkpoint.Checkpoints(out_dir, keep=cfg.checkpoint.keep)
        ckpts.save(0, new_params, new_opt, checkpoint.Meta(stage=0, member=dst.name, mode=cfg.mode,
                                                           model=dst.model.to_dict(), data_state=meta.get("data_state"),
                                                           expanded_from=str(from_dir)))
        ckpts.close()
        workdir_lib.write_lineage(workdir, lineage, complete=True)  # last
    return out_dir


def _load_tasks(path: str) -> list[dict]:
    """evaluate.load_tasks with its ValueError (a malformed file) turned into a one-line InputError."""
    try:
        return evaluate.load_tasks(path)
    except UnicodeDecodeError as e:
        raise config_lib.InputError(f"--tasks: {path} is not UTF-8 text ({e.reason} at byte {e.start}); give a "
                                    "UTF-8 JSONL task file") from None
    except (ValueError, AssertionError, OSError) as e:
        raise config_lib.InputError(str(e) or f"--tasks: {path} is not a valid task file") from None


def evaluate_members(workdir: Path, task_files: list[str]) -> dict:
    """Held-out loss and multiple-choice accuracy (acc_norm) of every member; writes W/eval.json."""
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    items = {Path(f).stem: _load_tasks(f) for f in task_files}
    workdir_lib.check_writable(workdir)  # eval.json: checked before anything is computed
    lock.check_free(workdir)
    corpus = corpus_lib.prepare(cfg.data, cfg.model.vocab_size, workdir, splits=("eval",))
    mesh = sharding.eval_mesh()
    host = pipeline.eval_batches(corpus.eval, cfg.data.seq_len, cfg.data.batch_size, cfg.data.eval_batches)
    batches = [jax.device_put(b, sharding.batch_sharding(mesh)) for b in host]
    result: dict = {"convention": evaluate.__doc__.split("\n\n")[1].replace("\n", " "), "members": {}}
    with jax.set_mesh(mesh):
        for s in stages:
            if not checkpoint.has_checkpoint(workdir_lib.member_dir(workdir, s.name)):
                continue
            params = workdir_lib.member_params(workdir, s, mesh)
            entry = {"eval_loss": evaluate.eval_loss(params, s.model, batches, corpus.document_eos(cfg.data)),
                     "tasks": {}}
            for name, task in items.items():
                entry["tasks"][name] = evaluate.score_tasks(params, s.model, corpus.tokenizer, task, cfg.data.seq_len)
            result["members"][s.name] = entry
    if not result["members"]:
        raise config_lib.InputError(f"--workdir={workdir} holds no finished member; train the family first")
    if jax.process_index() == 0:
        from jaxgrow.eval.benchmarks import results as bench_results  # noqa: PLC0415

        merged = dict(bench_results.merge_eval_json(workdir, result["members"]), convention=result["convention"])
        storage.atomic_write_text(storage.join(workdir, "eval.json"), json.dumps(merged, indent=2))
        report.render_markdown(workdir)
    return result


# ----------------------------------------------------------------------------------------------
# Hugging Face export / import


def export_workdir(workdir: Path, out: Path, member: str | None, max_position_embeddings: int | None = None,
                   dtype: str = "float32") -> list[Path]:
    """Exports one member to `out`, or (member=None) every finished member to out/<name>/.
    The run's tokenizer.json goes along; max_position_embeddings defaults to the sequence length the run trained
    at (data.seq_len: what transformers users read it as); dtype: float32 or bfloat16."""
    hf.check_export_args(max_position_embeddings, dtype)
    cfg, stages = workdir_lib.select_members(workdir, member)
    max_position_embeddings = max_position_embeddings or int(cfg.data.seq_len)
    workdir_lib.check_writable(out, "--out")
    tok_path = storage.join(workdir, "tokenizer.json")
    tokenizer = tokenizers_lib.read_tokenizer(str(tok_path), "--workdir") if tok_path.is_file() else None
    if tokenizer is None:
        log.warning("%s has no tokenizer.json; exporting weights without a tokenizer", workdir)
    # the run's own document delimiters, so transformers' generate stops where the run's documents end
    specials = {"eos_token": cfg.data.get("eos_token") or None, "bos_token": cfg.data.get("bos_token") or None}
    written = []
    storage.sweep_scratch("export")
    for stage in stages:  # params stay sharded: export streams them tensor by tensor (jaxgrow/interop/export.py)
        params = workdir_lib.member_params(workdir, stage)
        dest = storage.join(out) if member is not None else storage.join(out, stage.name)
        if not storage.is_remote(dest):
            written.append(export.save_pretrained(params, stage.model, dest, tokenizer,
                                                  max_position_embeddings=max_position_embeddings, dtype=dtype,
                                                  **specials))
            faults.point("export_writing")
            continue
        # the streaming writer needs files it can seek and rename: write locally, then upload each file
        # (every object appears all-or-nothing; config.json last, so a reader finding it finds the weights)
        tmp = storage.scratch_dir("export")
        try:
            export.save_pretrained(params, stage.model, tmp, tokenizer,
                                   max_position_embeddings=max_position_embeddings, dtype=dtype, **specials)
            for rel in sorted(storage.list_files(tmp), key=lambda r: r == "config.json"):
                storage.copy_file(Path(tmp, rel), storage.join(dest, rel))
        finally:
            storage.release_scratch(tmp)
        written.append(dest)
        faults.point("export_writing")
    return written


def import_to_workdir(hf_dir: Path, workdir: Path) -> Path:
    """Writes `workdir` as a finished one-member run (member 'model') holding the HF checkpoint:
    members/model/ (params, a fresh optimizer state, meta), config.json (base_config with the
    imported model) and the HF tokenizer.json when there is one. Grow it with
    `expand --from W/members/model`. Returns the member directory."""
    params, model_cfg = hf.load_params(hf_dir)
    cfg = config_lib.base_config()
    cfg.model = model_cfg
    checks.validate(cfg)
    workdir_lib.check_workdir_writable(workdir)
    out_dir = workdir_lib.member_dir(workdir, hf.IMPORTED_MEMBER)
    if storage.join(workdir, "config.json").exists():
        raise config_lib.InputError(f"--workdir={workdir} already holds a run; give an empty or new directory")
    tokenizer = Path(hf_dir, "tokenizer.json")
    _warn_tokenizer_mismatch(tokenizer, model_cfg)
    lock.check_free(workdir)

    device = jax.devices()[0]
    params = jax.device_put(params, device)
    opt_state = jax.jit(trainer.make_optimizer(cfg.optimizer, model_cfg).init)(params)
    workdir.mkdir(parents=True, exist_ok=True)
    with lock.held(workdir, "import"):
        storage.remove_tree(out_dir)  # an import killed before its config.json: redone from the start
        if tokenizer.is_file():
            storage.copy_file(tokenizer, storage.join(workdir, "tokenizer.json"))
        ckpts = checkpoint.Checkpoints(out_dir)
        ckpts.save(0, params, opt_state, checkpoint.Meta(stage=0, member=hf.IMPORTED_MEMBER, mode=cfg.mode,
                                                         model=model_cfg.to_dict(),
                                                         imported_from=str(Path(hf_dir).resolve())))
        ckpts.close()
        workdir_lib.write_config(cfg, workdir)  # last: a workdir with a config.json holds the whole import
    return out_dir


def _warn_tokenizer_mismatch(tokenizer: Path, model_cfg: Any) -> None:
    """Training on the imported run reads data through this tokenizer: warn now (the import itself
    succeeds) when the data rules would refuse it: more tokens than model.vocab_size, or no EOS
    token that data.eos_token could name (the rules of data.load_tokenizer)."""
    if not tokenizer.is_file():
        log.warning("%s has no tokenizer.json; set data.tokenizer before training on the imported run",
                    tokenizer.parent)
        return
    try:
        tokenizers_lib.load_tokenizer(tokenizer, model_cfg.vocab_size, "tokenizer.json")
    except DataError as e:  # unparseable file, too many tokens, or no recognised EOS token
        log.warning("%s; training on the imported run needs data.tokenizer / data.eos_token that fit", e)
