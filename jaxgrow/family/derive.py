"""New runs derived from a checkpoint: `expand` grows it, `prune` cuts it down, into the config's first member,
written as step 0 of stage 0 of a new workdir that `train` continues (the same data stream position, the source
run's tokenizer, pinned).

W/lineage.json records the parent (its workdir, member, step, train FLOPs and tokens, data) first, marked
incomplete, and is completed last: a killed expand or prune is finished by rerunning the same command, and `train`
refuses a half-written workdir rather than start it from a random init. A pruned run distils from its parent by
default (config.distill.teacher = "": the parent checkpoint), as Minitron does.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import ml_collections

from jaxgrow import config as config_lib, expand, prune as prune_lib, storage
from jaxgrow.data import corpus as corpus_lib, tokenizers as tokenizers_lib
from jaxgrow.family import growth, lock, pruning, run_plan, workdir as workdir_lib
from jaxgrow.model import sharding
from jaxgrow.train import checkpoint, faults, trainer


log = logging.getLogger("jaxgrow")


@dataclasses.dataclass
class Source:
    """The checkpoint a derived run starts from."""

    directory: Any
    step: int
    meta: dict
    model: ml_collections.ConfigDict
    tokenizer: tokenizers_lib.TokenizerInfo | None  # the parent run's, when it has one
    run_dir: Any  # the run it belongs to (<run> of <run>/members/<name> or <run>/stages/<k>-<name>)


def read_source(from_dir: Any, cfg: Any) -> Source:
    """The newest checkpoint of `from_dir` and its run's tokenizer; one line when there is none."""
    if not checkpoint.has_checkpoint(from_dir):
        raise config_lib.InputError(f"--from={from_dir} holds no checkpoint (expected an orbax step directory with "
                                    "params/opt_state/meta, e.g. W/members/<name> or W/stages/<k>-<name>)")
    ckpts = checkpoint.Checkpoints(from_dir)
    try:
        step = ckpts.latest_step()
        meta = ckpts.read_meta(step)
    finally:
        ckpts.close()
    model = ml_collections.ConfigDict(meta["model"])
    parent = storage.as_path(str(from_dir), "--from").parent.parent  # <run>/members/<name> or <run>/stages/<k>-<name>
    tokenizer = None
    if storage.join(parent, tokenizers_lib.RUN_TOKENIZER).exists():
        parent_cfg = workdir_lib.read_run_config(parent, "--from") if storage.join(parent, "config.json").exists() else cfg
        tokenizer = tokenizers_lib.run_tokenizer(parent, model.vocab_size, parent_cfg.data.eos_token,
                                                 parent_cfg.data.bos_token, "--from")
    return Source(from_dir, step, meta, model, tokenizer, parent)


def _check_data_tokenizer(cfg: Any, source: Source) -> None:
    """The config's data (data.tokenizer or tokenized directories) must be tokenized with the parent's tokenizer."""
    declared = corpus_lib.declared_tokenizer(cfg.data, cfg.model.vocab_size if not len(cfg.members)
                                             else config_lib.members(cfg)[0].model.vocab_size)
    if declared is not None and source.tokenizer is not None and declared.sha256 != source.tokenizer.sha256:
        raise config_lib.InputError(
            f"--config: the data's tokenizer (sha256 {declared.sha256[:12]}..., data.train_files / data.tokenizer) is "
            f"not the tokenizer {source.directory} was trained with (sha256 {source.tokenizer.sha256[:12]}...); give "
            "data tokenized with the parent's tokenizer")


def derive_run(cfg: Any, from_dir: Any, workdir: Any, kind: str, make_state: Callable, command: str | None) -> Any:
    """Validates, then writes the derived run: lineage (incomplete), tokenizer and its pin, config, the step-0
    checkpoint, lineage (complete). make_state(plan, source, mesh, optimizer) -> (params, opt_state) of the first
    member; kind: expand | prune."""
    plan = run_plan.resolve(cfg)
    dst = plan.stages[0]
    source = read_source(from_dir, cfg)
    if source.model.vocab_size != dst.model.vocab_size:
        raise config_lib.InputError(f"model.vocab_size={dst.model.vocab_size} differs from the checkpoint's "
                                    f"{source.model.vocab_size}")
    _check_data_tokenizer(cfg, source)
    storage.check_apart(workdir, source.run_dir, "--workdir", "the run of --from")
    workdir_lib.check_workdir_writable(workdir)
    out_dir = workdir_lib.stage_dir(workdir, plan.stages[0])
    lineage = dict(workdir_lib.parent_lineage(from_dir, source.step, source.meta, cfg), command=command, kind=kind)
    existing = workdir_lib.read_lineage(workdir)
    if existing is not None and existing["complete"] and existing["key"] == lineage["key"]:
        log.info("%s already holds this %s (lineage.json); nothing to do", workdir, kind)
        return out_dir
    if existing is None and (checkpoint.has_checkpoint(out_dir) or storage.join(workdir, "config.json").exists()):
        raise config_lib.InputError(f"--workdir={workdir} already holds a run; give an empty or new directory")
    if existing is not None and existing["key"] != lineage["key"]:
        raise config_lib.InputError(f"--workdir={workdir} holds {'an' if existing['complete'] else 'an interrupted'} "
                                    f"{existing.get('kind', 'expand')} of {existing['parent']['checkpoint']} with "
                                    "another config or source; rerun that command, or give an empty or new directory")
    mesh = sharding.make_mesh(cfg.mesh)
    optimizer = trainer.make_optimizer(cfg.optimizer, plan.stages[0].model)
    params, opt_state = make_state(plan, source, mesh, optimizer)
    lock.check_free(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with lock.held(workdir, command or kind):
        workdir_lib.write_lineage(workdir, lineage, complete=False)  # first: from here on, a kill is resumable
        storage.remove_tree(out_dir)  # a killed run's partial step
        if source.tokenizer is not None:
            # byte for byte: the derived run pins the very file its parent trained with
            storage.copy_file(storage.join(source.run_dir, tokenizers_lib.RUN_TOKENIZER),
                              storage.join(workdir, tokenizers_lib.RUN_TOKENIZER))
            tokenizers_lib.pin(workdir, source.tokenizer, specials=False)
        workdir_lib.write_config(cfg, workdir)
        faults.point("expand_saving")
        ckpts = checkpoint.Checkpoints(out_dir, keep=cfg.checkpoint.keep)
        first = plan.stages[0]
        ckpts.save(0, params, opt_state, checkpoint.Meta(
            stage=0, member=first.name, mode=cfg.mode, model=first.model.to_dict(),
            data_state=source.meta.get("data_state"), expanded_from=str(from_dir)))
        ckpts.close()
        workdir_lib.write_lineage(workdir, lineage, complete=True)  # last
    return out_dir


def _restore_source(cfg: Any, source: Source, mesh, with_opt: bool):
    src_abstract = trainer.abstract_state(source.model, trainer.make_optimizer(cfg.optimizer, source.model), mesh)
    ckpts = checkpoint.Checkpoints(source.directory)
    try:
        params, opt_state, _ = ckpts.restore(source.step, src_abstract.params,
                                             src_abstract.opt_state if with_opt else None)
    finally:
        ckpts.close()
    return params, opt_state


def expand_checkpoint(cfg: Any, from_dir: Path, workdir: Path, command: str | None = None) -> Any:
    """Grows the newest checkpoint in `from_dir` into the config's first member (config.expansion) as a new run."""

    def make_state(plan, source, mesh, optimizer):
        dst = plan.stages[0].model
        e = cfg.expansion
        try:
            expand.check(source.model, dst, e.method, e.depth, e.depth_position)
        except ValueError as err:
            raise config_lib.InputError(f"--from={from_dir} -> --config: {err}") from None
        params, opt_state = _restore_source(cfg, source, mesh, with_opt=e.opt_state == "carry")
        return growth.grow(cfg, source.model, dst, params, opt_state, optimizer, mesh, growth.stage_key(cfg.seed, 0, 1))

    return derive_run(cfg, from_dir, workdir, "expand", make_state, command)


def prune_checkpoint(cfg: Any, from_dir: Path, workdir: Path, command: str | None = None) -> Any:
    """Prunes the newest checkpoint in `from_dir` down to the config's first stage's member (activation importance
    on calibration batches of the config's training data) as a new run, which distils from the parent by default."""

    def make_state(plan, source, mesh, optimizer):
        dst = plan.stages[0].model
        try:
            prune_lib.check(source.model, dst)
        except ValueError as err:
            raise config_lib.InputError(f"--from={from_dir} -> --config: {err}") from None
        params, opt_state = _restore_source(cfg, source, mesh, with_opt=cfg.prune.opt_state == "carry")
        tokens, document_eos = _calibration(cfg, source, dst.vocab_size)
        return pruning.prune(source.model, dst, params, opt_state, optimizer, mesh, tokens, document_eos=document_eos)

    return derive_run(cfg, from_dir, workdir, "prune", make_state, command)


def _calibration(cfg: Any, source: Source, vocab_size: int) -> tuple[Any, int | None]:
    """Calibration batches of the config's training data, read through the parent's tokenizer (raw text is tokenized
    into scratch and discarded; the run tokenizes it again into its own cache when it trains)."""
    data = ml_collections.ConfigDict(cfg.data.to_dict())
    if corpus_lib.declared_tokenizer(data, vocab_size) is None and source.tokenizer is not None:
        parent = storage.as_path(str(source.directory), "--from").parent.parent
        data.tokenizer = str(storage.join(parent, tokenizers_lib.RUN_TOKENIZER))
    corpus = corpus_lib.prepare(data, vocab_size, None, splits=("train",))
    try:
        return pruning.calibration_tokens(corpus.train_sources, cfg), corpus.document_eos(cfg.data)
    finally:
        corpus_lib.discard(corpus)
