"""The progressive family pipeline (train, expand, train, ...) and the independent baseline.

This is the only module that knows a run has several stages. Budgets (tokens, steps, FLOPs per
stage, and the cost rule) are in `budgets.py`; the workdir layout and member restore in
`workdir.py`; growing a state onto the mesh in `growth.py`; one stage's loop in `train/trainer.py`; the run's input checks in `checks.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxgrow import config as config_lib, storage
from jaxgrow.data import corpus as corpus_lib, pipeline
from jaxgrow.eval import report
from jaxgrow.family import checks, lock, passes, workdir as workdir_lib
from jaxgrow.family.budgets import StageBudget, budgets, lr_schedule, tokens_per_step
from jaxgrow.family.growth import grow, stage_key
from jaxgrow.family.workdir import member_dir, member_params, restore_member, stage_dir
from jaxgrow.model import sharding
from jaxgrow.train import checkpoint, compile_cache, faults, logs, schedules, trainer


log = logging.getLogger("jaxgrow")



# ----------------------------------------------------------------------------------------------
# The pipeline


@dataclasses.dataclass
class Setup:
    """What every stage shares: config, mesh, data."""

    cfg: Any
    workdir: Path
    mesh: jax.sharding.Mesh
    corpus: corpus_lib.Corpus
    eval_batches: list
    stages: list[StageBudget]
    goodput: Any = None  # goodput.Goodput of this process's run (wall time by activity)
    lineage: dict | None = None  # the run this one was grown from (`expand`; workdir.read_lineage)
    finished: bool = False  # every member was already trained and reported: a rerun only re-renders the report


def prepare(cfg: Any, workdir: Path) -> Setup:
    """Validates everything that can be wrong with the inputs (config, names, paths, the workdir's state and lock,
    mesh and batch, data manifests and shard sizes, tokenizer), then (only then) takes the workdir's lock and writes."""
    checks.validate(cfg)
    stages = budgets(cfg)
    workdir_lib.check_workdir_writable(workdir)
    workdir_lib.check_expand_finished(workdir)
    lock.check_free(workdir)
    if checkpoint.kind(workdir) == "staged" and jax.process_count() > 1:
        raise config_lib.ConfigError(f"--workdir={workdir}: an {storage.scheme(workdir)}:// workdir is staged through "
                                     "local disk by one process (orbax 0.12.8 cannot write it itself); a multi-host "
                                     "run needs a gs:// bucket (written by every host) or a shared filesystem")
    mesh = sharding.make_mesh(cfg.mesh)
    if jax.process_count() > 1:
        log.info("mesh %s over %d processes; axes spanning processes: %s", dict(mesh.shape), jax.process_count(),
                 sharding.axes_spanning_processes(mesh))
    checks.check_batch_divides(cfg, mesh)
    workdir_lib.check_drift(cfg, workdir)
    stages = workdir_lib.apply_recorded(stages, workdir)  # a started stage keeps the budget it started with
    if cfg.get("eval") is not None:  # in-loop benchmarks: checked before anything is written
        from jaxgrow.eval.benchmarks import tasks as bench_tasks  # noqa: PLC0415

        bench_tasks.check_config(cfg.eval)
    corpus = corpus_lib.prepare(cfg.data, cfg.model.vocab_size, workdir if workdir.exists() else None)
    # -- inputs are valid: from here on the workdir is written --
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        lock.acquire(workdir)
    compile_cache.configure(cfg, workdir)  # before the first compilation (W/xla_cache appears only now)
    workdir_lib.write_config(cfg, workdir)
    if jax.process_index() == 0:
        corpus_lib.save_cache(corpus, workdir)
    warning = passes.repeat_warning([s.name for s in stages], passes.epochs_per_member(
        stages, cfg.mode, cfg.data.batch_size, corpus.train_tokens, cfg.data.seq_len), corpus.train_tokens)
    if warning:
        log.warning("%s", warning)
    batch_sharding = sharding.batch_sharding(mesh)
    host_batches = pipeline.eval_batches(corpus.eval, cfg.data.seq_len, cfg.data.batch_size, cfg.data.eval_batches,
                                     rows=sharding.process_rows(batch_sharding, cfg.data.batch_size))
    eval_batches = [jax.make_array_from_process_local_data(batch_sharding, b) for b in host_batches]
    return Setup(cfg, workdir, mesh, corpus, eval_batches, stages, lineage=workdir_lib.read_lineage(workdir))


def async_saves(cfg: Any, workdir: Path) -> bool:
    """Asynchronous checkpoint saves: when asked, and by default on gs:// workdirs (a save there uploads the whole
    state; the loop goes on and the next save, or the end of the stage, waits for it)."""
    return bool(cfg.checkpoint.async_save or (checkpoint.kind(workdir) == "gs"
                                              and cfg.checkpoint.get("async_save_remote", True)))


def expand_state(setup: Setup, prev: StageBudget, stage: StageBudget, optimizer):
    """The first state of stage k: the previous member grown (randomness from seed and stage index)."""
    cfg = setup.cfg
    carry = cfg.expansion.opt_state == "carry"
    params, opt_state, meta = restore_member(setup.workdir, prev, optimizer, setup.mesh, with_opt=carry)
    new_params, new_opt = grow(cfg, prev.model, stage.model, params, opt_state, optimizer, setup.mesh,
                               stage_key(cfg.seed, stage.index, 1))
    return trainer.new_state(new_params, new_opt), meta["data_state"], params


def run(cfg: Any, workdir: Path, signals: faults.SignalFlag | None = None) -> Setup:
    """Builds (or resumes) the whole family; each finished member lands in members/<name>/."""
    from jaxgrow.train.goodput import Goodput  # noqa: PLC0415

    gp = Goodput()
    setup = prepare(cfg, workdir)
    setup.goodput = gp
    if all(checkpoint.has_checkpoint(member_dir(workdir, s.name)) for s in setup.stages) and \
            storage.join(workdir, "report.json").exists():
        log.info("%s: every member is trained and reported already; nothing to train (the report is re-rendered)",
                 workdir)
        setup.finished = True
        return setup
    signals = signals or faults.SignalFlag()
    metrics_log = logs.MetricsLog(workdir)
    flops_before = float(setup.lineage["train_flops"]) if setup.lineage else 0.0  # a grown run continues the count
    steps_before = 0
    try:
        for stage in setup.stages:
            if checkpoint.has_checkpoint(member_dir(workdir, stage.name)):
                log.info("stage %d (%s): member checkpoint exists, skipping", stage.index, stage.name)
                flops_before += stage.train_flops
                steps_before += stage.steps
                continue
            workdir_lib.record_budget(workdir, stage)
            _run_one_stage(setup, stage, flops_before, steps_before, metrics_log, signals)
            flops_before += stage.train_flops
            steps_before += stage.steps
    finally:
        metrics_log.close()
    return setup


def _run_one_stage(setup: Setup, stage: StageBudget, flops_before: float, steps_before: int, metrics_log,
                   signals) -> None:
    cfg, mesh, workdir = setup.cfg, setup.mesh, setup.workdir
    sharding.warn_undivided(stage.model, mesh, f"stage {stage.index} ({stage.name})")
    prev = setup.stages[stage.index - 1] if stage.index > 0 else None
    progressive = cfg.mode == "progressive" and prev is not None
    consistency = None
    if progressive and cfg.consistency.weight > 0:
        consistency = trainer.Consistency(prev.model, cfg.consistency.weight, stage.teacher_active_steps)
    compiled = trainer.compile_stage(stage.model, cfg.optimizer, lr_schedule(cfg, stage), mesh, consistency=consistency,
                                   document_eos=setup.corpus.document_eos(cfg.data))
    optimizer, abstract = compiled.optimizer, compiled.abstract

    ckpts = checkpoint.Checkpoints(stage_dir(workdir, stage), keep=cfg.checkpoint.keep, async_save=async_saves(cfg, workdir))
    restored = ckpts.restore_latest_good(abstract.params, abstract.opt_state)
    teacher_params = None
    if restored is not None:
        params, opt_state, meta = restored
        state = trainer.TrainState(step=jnp.asarray(meta["step"], jnp.int32), params=params, opt_state=opt_state,
                                 nonfinite=jnp.asarray(meta.get("nonfinite", 0), jnp.int32))
        data_state = meta["data_state"]
        log.info("stage %d (%s): resumed at step %d/%d", stage.index, stage.name, meta["step"], stage.steps)
    elif progressive:
        t0 = time.perf_counter()
        with setup.goodput.measure("expansion") if setup.goodput else contextlib.nullcontext():
            state, data_state, teacher_params = expand_state(setup, prev, stage, optimizer)
        log.info("stage %d (%s): expanded %s -> %s (%s/%s) in %.1fs", stage.index, stage.name, prev.name, stage.name,
                 cfg.expansion.method, cfg.expansion.depth, time.perf_counter() - t0)
    else:
        state = trainer.init_state(stage.model, optimizer, stage_key(cfg.seed, stage.index, 0), mesh)
        data_state = None

    if consistency is not None:
        if teacher_params is None:
            teacher_params, _, _ = restore_member(workdir, prev, optimizer, mesh, with_opt=False)
    else:
        teacher_params = None

    batch_sharding = sharding.batch_sharding(mesh)
    dataset = pipeline.train_dataset(setup.corpus.train_sources, cfg.data.seq_len, cfg.data.batch_size, cfg.seed,
                                 rows=sharding.process_rows(batch_sharding, cfg.data.batch_size))
    read_ahead = int(cfg.data.get("read_ahead", -1))
    data_iter = pipeline.DeviceIterator(dataset, batch_sharding, cfg.data.prefetch, data_state,
                                        workers=cfg.data.get("workers", 0), global_batch=cfg.data.batch_size,
                                        mixture=[(s.name, s.weight) for s in setup.corpus.train_sources],
                                        row_tokens=cfg.data.seq_len, read_ahead=None if read_ahead < 0 else read_ahead)
    per_step = tokens_per_step(cfg)
    spec = trainer.StageSpec(
        index=stage.index, name=stage.name, model_cfg=stage.model, steps=stage.steps, tokens_per_step=per_step,
        train_flops_per_step=per_step * stage.train_flops_per_token,
        teacher_flops_per_step=per_step * stage.teacher_forward_flops_per_token,
        teacher_active_steps=stage.teacher_active_steps, flops_offset=flops_before, step_offset=steps_before,
        meta=checkpoint.Meta(stage=stage.index, member=stage.name, mode=cfg.mode, model=stage.model.to_dict()))
    with jax.set_mesh(mesh):
        try:
            state = trainer.run_stage(spec, state, compiled.train_step, compiled.eval_step, data_iter,
                                      setup.eval_batches, ckpts, metrics_log, cfg, workdir, signals, teacher_params,
                                      goodput=setup.goodput, after_eval=_benchmark_hook(cfg, stage, workdir, metrics_log))
        finally:
            data_iter.close()  # read-ahead threads of a bucket store end with the stage
        with setup.goodput.measure("checkpoint") if setup.goodput else contextlib.nullcontext():
            final = checkpoint.Checkpoints(member_dir(workdir, stage.name), async_save=async_saves(cfg, workdir))
            final.save(stage.steps, state.params, state.opt_state, spec.meta.replace(
                data_state=data_iter.state(), nonfinite=int(jax.device_get(state.nonfinite))))
            faults.point("member_saving")
            final.close()
    if setup.goodput:
        # no "step": report.read_metrics keys records by (stage, step) and must keep the last loss
        metrics_log.write({"stage": stage.index, "member": stage.name, "goodput": setup.goodput.summary()})
    ckpts.close()
    log.info("stage %d (%s): done, member checkpoint in %s", stage.index, stage.name, member_dir(workdir, stage.name))


def _benchmark_hook(cfg: Any, stage: StageBudget, workdir: Path, metrics_log):
    """config.eval.suite during training: (step, params, record) -> whether the suite ran."""
    if cfg.get("eval") is None or not cfg.eval.suite:
        return None
    from jaxgrow.eval.benchmarks import scoring as bench_scoring  # noqa: PLC0415

    return lambda step, params, record: bench_scoring.in_loop(cfg, stage.model, params, workdir, step, stage.steps,
                                                           record, metrics_log)


def stage_peak_lr(cfg: Any, stage: StageBudget) -> float:
    """The peak LR stage `stage` re-warms to under cfg.lr."""
    lr = cfg.lr
    return schedules.peak_lr(stage.non_embedding_params, lr.rule, peak=lr.peak, n_ref=lr.n_ref, alpha=lr.alpha,
                             table=lr.table)


def write_report(setup: Setup, consistency: bool = True) -> dict:
    """Evaluates every member (held-out loss; with `consistency`, the KL to the next member and the next member's
    acceptance of its drafts) and writes report.json/.md and plots. consistency=False is for runs whose reader
    needs only the losses (LR sweeps)."""
    from jaxgrow.eval import evaluate  # noqa: PLC0415
    from jaxgrow.serve import speculative  # noqa: PLC0415

    cfg, stages = setup.cfg, setup.stages
    params = [member_params(setup.workdir, s, setup.mesh) for s in stages]
    evals = []
    with jax.set_mesh(setup.mesh):
        for i, s in enumerate(stages):
            ev = {"eval_loss": evaluate.eval_loss(params[i], s.model, setup.eval_batches,
                                                 setup.corpus.document_eos(cfg.data)),
                  "kl_to_next": None, "kl_from_next": None, "peak_lr": stage_peak_lr(cfg, s)}
            if consistency and i + 1 < len(stages):
                ev["kl_to_next"], ev["kl_from_next"] = evaluate.kl_between(
                    params[i], s.model, params[i + 1], stages[i + 1].model, setup.eval_batches)
            evals.append(ev)
        # consistency as speculative decoding sees it: member i drafting for member i+1 (serve/speculative.py)
        rates = speculative.family_acceptance(params, [s.model for s in stages], setup.eval_batches) if consistency \
            else [None] * len(stages)
        for i, rate in enumerate(rates):
            evals[i]["draft_acceptance"] = None if rate is None else {"target": stages[i + 1].name, **rate}
    epochs = passes.epochs_per_member(stages, cfg.mode, cfg.data.batch_size, setup.corpus.train_tokens, cfg.data.seq_len,
                                      windows_before=lineage_windows(setup))
    for ev, e in zip(evals, epochs):
        ev["epochs"] = e
    faults.point("report_writing")
    result = report.build(cfg, stages, evals, budgets(cfg, "independent"), setup.lineage)  # stages: as recorded
    if setup.goodput is not None:
        result["goodput"] = setup.goodput.summary()
    if jax.process_index() == 0:
        report.write(setup.workdir, result, stages, [lr_schedule(cfg, s) for s in stages])
    return result


def lineage_windows(setup: Setup) -> int:
    """Training windows the parent of a grown run consumed on this run's own data (its passes count in this run's
    epochs: the data iterator continues where the parent's stopped), else 0."""
    lin = setup.lineage
    if not lin or not lin.get("data") or lin["data"].get("data_config") is None:
        return 0
    parent_data, data = lin["data"]["data_config"], setup.cfg.data
    same = (parent_data.get("train_files") == data.train_files and parent_data.get("seq_len") == data.seq_len
            and lin["data"].get("tokenizer_sha256") == hashlib.sha256(setup.corpus.tokenizer.to_str().encode()).hexdigest())
    return int(lin["data"]["windows_consumed"]) if same else 0


def render_finished(setup: Setup) -> dict:
    """The rerun of a finished run: report.md and the plots re-rendered from report.json and eval.json (every section
    from its source, nothing recomputed)."""
    result = json.loads(storage.join(setup.workdir, "report.json").read_text())
    if jax.process_index() == 0:
        report.render_markdown(setup.workdir)
        report.write_plots(setup.workdir, result, setup.stages, [lr_schedule(setup.cfg, s) for s in setup.stages])
    return result


def finish(setup: Setup) -> None:
    """Ends a run: the workdir's lock is released."""
    lock.release(setup.workdir)
