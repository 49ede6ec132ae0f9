"""The family pipeline: every stage of the transition table in training order (grow, prune or scratch; cross-entropy
with or without a distillation teacher), then the report.

This is the only module that knows a run has several stages. The run plan (members, transitions, budgets) is
`run_plan.py`; the table `transitions.py`; budgets and the cost rule `budgets.py`; the workdir layout and member
restore `workdir.py`; growing and pruning a state onto the mesh `growth.py` and `pruning.py`; one stage's loop
`train/loop.py`. A stage starts through STAGE_INITS[row.init] and distils when its row has a teacher: no branch on
the family's mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxgrow import config as config_lib, storage
from jaxgrow.data import corpus as corpus_lib, pipeline, tokenizers as tokenizers_lib
from jaxgrow.eval import report
from jaxgrow.family import growth, lock, passes, pruning, run_plan, transitions as transitions_lib
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.family.budgets import StageBudget, lr_schedule, tokens_per_step
from jaxgrow.family.run_plan import RunPlan
from jaxgrow.family.workdir import member_dir, member_params, restore_member, stage_dir
from jaxgrow.model import sharding
from jaxgrow.train import checkpoint, compile_cache, faults, logs, loop as loop_lib, schedules, trainer
from jaxgrow.train.goodput import Goodput


log = logging.getLogger("jaxgrow")


# ----------------------------------------------------------------------------------------------
# Preparing a run


@dataclasses.dataclass
class Setup:
    """What every stage shares: the run plan, the mesh, the data."""

    plan: RunPlan
    workdir: Path
    mesh: jax.sharding.Mesh
    corpus: corpus_lib.Corpus
    eval_batches: list
    goodput: Goodput | None = None  # wall time by activity of this process's run
    lineage: dict | None = None  # the run this one was grown or pruned from (`expand`, `prune`: lineage.json)
    finished: bool = False  # every member was already trained and reported: a rerun only re-renders the report

    @property
    def cfg(self) -> Any:
        return self.plan.cfg

    @property
    def stages(self) -> list[StageBudget]:
        return list(self.plan.stages)


def prepare(cfg: Any, workdir: Path) -> Setup:
    """Validates everything that can be wrong with the inputs (config, transitions, names, paths, the workdir's state
    and lock, mesh and batch, data manifests and shard sizes, tokenizer), then (only then) takes the lock and writes."""
    lineage = workdir_lib.read_lineage(workdir)
    plan = run_plan.resolve(cfg, lineage=lineage)
    workdir_lib.check_workdir_writable(workdir)
    workdir_lib.check_expand_finished(workdir)
    lock.check_free(workdir)
    mesh = _mesh(cfg, workdir)
    workdir_lib.check_drift(cfg, workdir)
    plan = plan.with_stages(workdir_lib.apply_recorded(list(plan.stages), workdir))  # a started stage keeps its budget
    if cfg.get("eval") is not None:  # in-loop benchmarks: checked before anything is written
        from jaxgrow.eval.benchmarks import tasks as bench_tasks  # noqa: PLC0415

        bench_tasks.check_config(cfg.eval)
    corpus = corpus_lib.prepare(cfg.data, cfg.model.vocab_size, workdir if workdir.exists() else None)
    check_teacher_tokenizers(plan, corpus.info)
    # -- inputs are valid: from here on the workdir is written --
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        lock.acquire(workdir)
    compile_cache.configure(cfg, workdir)  # before the first compilation (W/xla_cache appears only now)
    workdir_lib.save_rebuilt_budgets(list(plan.stages), workdir)
    workdir_lib.write_config(cfg, workdir)
    if jax.process_index() == 0:
        corpus_lib.save_cache(corpus, workdir)
        tokenizers_lib.pin(workdir, corpus.info)  # every later command checks the run's data against it
    stages = list(plan.stages)
    epochs = passes.epochs_per_member(stages, cfg.mode, cfg.data.batch_size, corpus.train_tokens, cfg.data.seq_len)
    warning = passes.repeat_warning([s.name for s in stages], epochs, corpus.train_tokens)
    if warning:
        log.warning("%s", warning)
    eval_batches = pipeline.device_eval_batches(corpus.eval, cfg.data, mesh)
    return Setup(plan, workdir, mesh, corpus, eval_batches, lineage=lineage)


def check_teacher_tokenizers(plan: RunPlan, info: tokenizers_lib.TokenizerInfo) -> None:
    """A teacher given by checkpoint path must have been trained with this run's tokenizer (its run's pinned
    tokenizer.json): the KL compares distributions over the same ids, so another tokenizer is refused, not mixed."""
    for path in plan.teacher_models:
        run_dir = storage.as_path(path, "distill.teacher").parent.parent  # <run>/members/<name>
        if not storage.join(run_dir, tokenizers_lib.RUN_TOKENIZER).exists():
            continue
        teacher = tokenizers_lib.read_tokenizer(str(storage.join(run_dir, tokenizers_lib.RUN_TOKENIZER)),
                                                "distill.teacher")
        if tokenizers_lib.tokenizer_hash(teacher) != info.sha256:
            raise config_lib.InputError(f"distill.teacher={path}: its run's tokenizer ({run_dir}/tokenizer.json) is "
                                        "not this run's; a teacher must share the students' tokenizer")


def _mesh(cfg: Any, workdir: Path) -> jax.sharding.Mesh:
    """The run's mesh, checked against the devices, the batch and the workdir's storage."""
    from jaxgrow.family import checks  # noqa: PLC0415

    if checkpoint.kind(workdir) == "staged" and jax.process_count() > 1:
        raise config_lib.ConfigError(f"--workdir={workdir}: an {storage.scheme(workdir)}:// workdir is staged through "
                                     "local disk by one process (orbax 0.12.8 cannot write it itself); a multi-host "
                                     "run needs a gs:// bucket (written by every host) or a shared filesystem")
    mesh = sharding.make_mesh(cfg.mesh)
    if jax.process_count() > 1:
        log.info("mesh %s over %d processes; axes spanning processes: %s", dict(mesh.shape), jax.process_count(),
                 sharding.axes_spanning_processes(mesh))
    checks.check_batch_divides(cfg, mesh)
    return mesh


def async_saves(cfg: Any, workdir: Path) -> bool:
    """Asynchronous checkpoint saves: when asked, and by default on gs:// workdirs (a save there uploads the whole
    state; the loop goes on and the next save, or the end of the stage, waits for it)."""
    return bool(cfg.checkpoint.async_save or (checkpoint.kind(workdir) == "gs"
                                              and cfg.checkpoint.get("async_save_remote", True)))


# ----------------------------------------------------------------------------------------------
# How a stage starts: one function per `init` kind of the transition table


def scratch_state(setup: Setup, stage: StageBudget, optimizer) -> tuple[trainer.TrainState, dict | None, Any]:
    """A fresh initialisation (randomness from the seed and the stage index); a fresh data iterator."""
    state = trainer.init_state(stage.model, optimizer, growth.stage_key(setup.cfg.seed, stage.index, 0), setup.mesh)
    return state, None, None


def grown_state(setup: Setup, stage: StageBudget, optimizer) -> tuple[trainer.TrainState, dict | None, Any]:
    """The source member grown into this one; its data iterator continues."""
    cfg = setup.cfg
    source = setup.plan.stage(stage.transition.source)
    carry = cfg.expansion.opt_state == "carry"
    params, opt_state, meta = restore_member(setup.workdir, source, optimizer, setup.mesh, with_opt=carry)
    new_params, new_opt = growth.grow(cfg, source.model, stage.model, params, opt_state, optimizer, setup.mesh,
                                      growth.stage_key(cfg.seed, stage.index, 1))
    return trainer.new_state(new_params, new_opt), meta["data_state"], params


def pruned_state(setup: Setup, stage: StageBudget, optimizer) -> tuple[trainer.TrainState, dict | None, Any]:
    """The source member pruned down to this one by activation importance on calibration batches of the training
    stream; its data iterator continues."""
    cfg = setup.cfg
    source = setup.plan.stage(stage.transition.source)
    carry = cfg.prune.opt_state == "carry"
    params, opt_state, meta = restore_member(setup.workdir, source, optimizer, setup.mesh, with_opt=carry)
    calibration = pruning.calibration_tokens(setup.corpus.train_sources, cfg)
    new_params, new_opt = pruning.prune(source.model, stage.model, params, opt_state, optimizer, setup.mesh,
                                        calibration, document_eos=setup.corpus.document_eos(cfg.data))
    return trainer.new_state(new_params, new_opt), meta["data_state"], params


STAGE_INITS: dict[str, Callable] = {"scratch": scratch_state, "grow": grown_state, "prune": pruned_state}


def teacher_params(setup: Setup, stage: StageBudget, distill: trainer.Distill, source_params: Any) -> Any:
    """The frozen teacher's params on the stage's mesh (sharded like the student): the source member's, already
    restored, when it is the teacher; else restored from its member or checkpoint path."""
    row = stage.transition
    if row.teacher == row.source and source_params is not None:
        return source_params
    if transitions_lib.teacher_is_path(row.teacher):
        return workdir_lib.checkpoint_params(storage.as_path(row.teacher, "distill.teacher"), distill.teacher_cfg,
                                             setup.mesh)
    optimizer = trainer.make_optimizer(setup.cfg.optimizer, distill.teacher_cfg)
    params, _, _ = restore_member(setup.workdir, setup.plan.stage(row.teacher), optimizer, setup.mesh, with_opt=False)
    return params


# ----------------------------------------------------------------------------------------------
# The run


def run(cfg: Any, workdir: Path, signals: faults.SignalFlag | None = None) -> Setup:
    """Builds (or resumes) the whole family; each finished member lands in members/<name>/."""
    gp = Goodput()
    setup = prepare(cfg, workdir)
    setup.goodput = gp
    if all(checkpoint.has_checkpoint(member_dir(workdir, s.name)) for s in setup.stages) and _report_intact(workdir):
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
            else:
                workdir_lib.record_budget(workdir, stage)
                run_one_stage(setup, stage, flops_before, steps_before, metrics_log, signals)
            flops_before += stage.train_flops
            steps_before += stage.steps
    finally:
        metrics_log.close()
    return setup


def _report_intact(workdir: Path) -> bool:
    """report.json exists and reads as a report; a damaged one (a kill or a full disk mid-write) is rebuilt from the
    members and metrics by reporting again (it holds nothing that cannot be recomputed)."""
    path = storage.join(workdir, "report.json")
    if not path.exists():
        return False
    try:
        report_json = json.loads(path.read_text())
        if isinstance(report_json, dict) and isinstance(report_json.get("members"), list):
            return True
    except (ValueError, UnicodeDecodeError):
        pass
    log.warning("%s is damaged (empty, truncated or not a report); rebuilding it from the members and metrics", path)
    return False


def _measure(setup: Setup, bucket: str):
    return setup.goodput.measure(bucket) if setup.goodput else contextlib.nullcontext()


def run_one_stage(setup: Setup, stage: StageBudget, flops_before: float, steps_before: int, metrics_log,
                  signals) -> None:
    """One row of the table: its start (resumed, or STAGE_INITS[init]), its loop, its member checkpoint."""
    cfg, mesh, workdir = setup.cfg, setup.mesh, setup.workdir
    sharding.warn_undivided(stage.model, mesh, f"stage {stage.index} ({stage.name})")
    distill = setup.plan.distill(stage)
    compiled = trainer.compile_stage(stage.model, cfg.optimizer, lr_schedule(cfg, stage), mesh, distill=distill,
                                     document_eos=setup.corpus.document_eos(cfg.data))
    ckpts = checkpoint.Checkpoints(stage_dir(workdir, stage), keep=cfg.checkpoint.keep,
                                   async_save=async_saves(cfg, workdir))
    state, data_state, source_params = initial_state(setup, stage, compiled, ckpts)
    # a resumed stage logs its steps past the checkpoint again: the killed run's records of them go
    metrics_log.drop_after(stage.index, int(jax.device_get(state.step)))
    teacher = teacher_params(setup, stage, distill, source_params) if distill is not None else None
    del source_params
    data_iter = _data_iterator(setup, data_state)
    spec = stage_spec(cfg, stage, flops_before, steps_before)
    hooks = loop_lib.standard_hooks(spec, eval_step=compiled.eval_step, eval_batches=setup.eval_batches,
                                    ckpts=ckpts, metrics_log=metrics_log, signals=signals, workdir=workdir,
                                    start=int(jax.device_get(state.step)),
                                    extra=_benchmark_hooks(setup, stage, metrics_log))
    with jax.set_mesh(mesh):
        try:
            state = loop_lib.run_stage(spec, state, compiled.train_step, data_iter, hooks, teacher_params=teacher,
                                       goodput=setup.goodput)
        finally:
            data_iter.close()  # read-ahead threads of a bucket store end with the stage
        with _measure(setup, "checkpoint"):
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


def initial_state(setup: Setup, stage: StageBudget, compiled, ckpts) -> tuple[trainer.TrainState, dict | None, Any]:
    """(state, data iterator state, the source member's params when they were restored): the stage's latest good
    checkpoint when it has one, else its row's init."""
    restored = ckpts.restore_latest_good(compiled.abstract.params, compiled.abstract.opt_state)
    if restored is not None:
        params, opt_state, meta = restored
        state = trainer.TrainState(step=jnp.asarray(meta["step"], jnp.int32), params=params, opt_state=opt_state,
                                   nonfinite=jnp.asarray(meta.get("nonfinite", 0), jnp.int32))
        log.info("stage %d (%s): resumed at step %d/%d", stage.index, stage.name, meta["step"], stage.steps)
        return state, meta["data_state"], None
    row = stage.transition
    t0 = time.perf_counter()
    with _measure(setup, "expansion") if row.init != "scratch" else contextlib.nullcontext():
        state, data_state, source_params = STAGE_INITS[row.init](setup, stage, compiled.optimizer)
    if row.init != "scratch":
        how = (f"{setup.cfg.expansion.method}/{setup.cfg.expansion.depth}" if row.init == "grow"
               else "activation importance")
        log.info("stage %d (%s): %s %s -> %s (%s) in %.1fs", stage.index, stage.name,
                 "expanded" if row.init == "grow" else "pruned", row.source, stage.name, how, time.perf_counter() - t0)
    return state, data_state, source_params


def _data_iterator(setup: Setup, data_state: dict | None) -> pipeline.DeviceIterator:
    cfg = setup.cfg
    batch_sharding = sharding.batch_sharding(setup.mesh)
    dataset = pipeline.train_dataset(setup.corpus.train_sources, cfg.data.seq_len, cfg.data.batch_size, cfg.seed,
                                     rows=sharding.process_rows(batch_sharding, cfg.data.batch_size))
    read_ahead = int(cfg.data.get("read_ahead", -1))
    return pipeline.DeviceIterator(dataset, batch_sharding, cfg.data.prefetch, data_state,
                                   workers=cfg.data.get("workers", 0), global_batch=cfg.data.batch_size,
                                   mixture=[(s.name, s.weight) for s in setup.corpus.train_sources],
                                   row_tokens=cfg.data.seq_len, read_ahead=None if read_ahead < 0 else read_ahead)


def stage_spec(cfg: Any, stage: StageBudget, flops_before: float, steps_before: int) -> loop_lib.StageSpec:
    """The stage's plan as the loop reads it: its budget, FLOPs offsets and the run's intervals."""
    per_step = tokens_per_step(cfg)
    profile = tuple(int(x) for x in cfg.profile_steps.split(":")) if cfg.profile_steps else None
    return loop_lib.StageSpec(
        index=stage.index, name=stage.name, model_cfg=stage.model, steps=stage.steps, tokens_per_step=per_step,
        train_flops_per_step=per_step * stage.train_flops_per_token,
        teacher_flops_per_step=per_step * stage.teacher_forward_flops_per_token,
        teacher_active_steps=stage.teacher_active_steps, flops_offset=flops_before, step_offset=steps_before,
        meta=checkpoint.Meta(stage=stage.index, member=stage.name, mode=cfg.mode, model=stage.model.to_dict()),
        log_every=cfg.log.every_steps, eval_every=cfg.log.eval_every_steps, checkpoint_every=cfg.checkpoint.every_steps,
        skip_nonfinite=cfg.skip_nonfinite_steps, profile=profile, progress=bool(cfg.log.progress))


def _benchmark_hooks(setup: Setup, stage: StageBudget, metrics_log) -> tuple[loop_lib.Hook, ...]:
    """config.eval.suite during training: every eval.every_steps steps (0: only at the end of each stage)."""
    ev = setup.cfg.get("eval")
    if ev is None or not ev.suite:
        return ()
    from jaxgrow.eval.benchmarks import scoring as bench_scoring  # noqa: PLC0415

    tokenizer = setup.corpus.tokenizer

    def fn(loop: loop_lib.Loop, done: int) -> None:
        bench_scoring.in_loop(ev, stage.model, loop.state.params, tokenizer, dict(
            loop.spec.record_base, step=done, train_flops=loop.spec.flops_at(done)), metrics_log)

    return (loop_lib.Hook("benchmarks", fn, every=int(ev.every_steps), bucket="eval", pauses_throughput=True),)


# ----------------------------------------------------------------------------------------------
# The report


def stage_peak_lr(cfg: Any, stage: StageBudget) -> float:
    """The peak LR stage `stage` re-warms to under cfg.lr."""
    lr = cfg.lr
    return schedules.peak_lr(stage.non_embedding_params, lr.rule, peak=lr.peak, n_ref=lr.n_ref, alpha=lr.alpha,
                             table=lr.table)


def write_report(setup: Setup, consistency: bool = True) -> dict:
    """Evaluates every member (held-out loss; with `consistency`, the KL to the next member in family order and the
    next member's acceptance of its drafts) and writes report.json/.md and plots. consistency=False is for runs whose
    reader needs only the losses (LR sweeps)."""
    cfg = setup.cfg
    stages = setup.plan.family_order()
    evals = member_evals(setup, stages, consistency)
    epochs = dict(zip([s.name for s in setup.stages], passes.epochs_per_member(
        setup.stages, cfg.mode, cfg.data.batch_size, setup.corpus.train_tokens, cfg.data.seq_len,
        windows_before=lineage_windows(setup))))
    for ev, s in zip(evals, stages):
        ev["epochs"] = epochs[s.name]
    faults.point("report_writing")
    independent = run_plan.resolve(cfg, "independent").stages
    result = report.build(cfg, stages, evals, independent, setup.lineage)  # stages: as recorded
    if setup.goodput is not None:
        result["goodput"] = setup.goodput.summary()
    if jax.process_index() == 0:
        report.write(setup.workdir, result, stages, [lr_schedule(cfg, s) for s in stages])
    return result


def member_evals(setup: Setup, stages: list[StageBudget], consistency: bool) -> list[dict]:
    """Per member (family order): held-out loss, the KL to the next member both ways, the next member's acceptance of
    its drafts, its peak LR."""
    from jaxgrow.eval import evaluate  # noqa: PLC0415
    from jaxgrow.serve import speculative  # noqa: PLC0415

    cfg = setup.cfg
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
    return evals


def lineage_windows(setup: Setup) -> int:
    """Training windows the parent of a grown or pruned run consumed on this run's own data (its passes count in this
    run's epochs: the data iterator continues where the parent's stopped), else 0."""
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
        stages = setup.plan.family_order()
        report.render_markdown(setup.workdir)
        report.write_plots(setup.workdir, result, stages, [lr_schedule(setup.cfg, s) for s in stages])
    return result


def finish(setup: Setup) -> None:
    """Ends a run: the workdir's lock is released."""
    lock.release(setup.workdir)


def train_and_report(cfg: Any, workdir: Path, signals: faults.SignalFlag | None = None,
                     consistency: bool = True) -> tuple[Setup, dict]:
    """The whole run: train (or resume) every stage, write the report (a finished run only re-renders it), release
    the lock. Raises faults.Preempted after a preemption checkpoint and trainer.NonFiniteLoss; the `train` command
    and the experiments call this one function."""
    setup = run(cfg, workdir, signals)
    try:
        result = render_finished(setup) if setup.finished else write_report(setup, consistency)
    finally:
        finish(setup)
    return setup, result
