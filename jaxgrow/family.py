"""The progressive family pipeline (train, expand, train, ...) and the independent baseline.

This is the only module that knows a run has several stages. Workdir layout:

    config.json            the resolved config (drift-checked on every rerun)
    tokenizer.json, data/  tokenizer and token caches (identical for every stage)
    stages/<k>-<name>/     rolling checkpoints of stage k (orbax; `checkpoint.keep` of them)
    members/<name>/        each member's final checkpoint (never deleted)
    metrics.jsonl, tb/     training metrics
    report.json, report.md, *.png

Budgets (the paper's cost rule, `budget.rule = "paper"`): with N_i the non-embedding parameters
and F_i the train FLOPs per token of member i, and T_L = budget.largest_tokens * budget_scale:
    independent: member i trains from scratch on T_i = T_L * N_i / N_L tokens
    progressive: stage 1 trains member 1 on T_1 tokens; stage k > 1 trains the expanded member k
                 on t_k = (F_k T_k - F_{k-1} T_{k-1}) / F_k tokens, so the cumulative cost after
                 stage k equals training member k alone, and the whole family costs what the
                 largest member alone costs.
A member's `tokens` (> 0) overrides its budget in both modes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxgrow import checkpoint, config as config_lib, data, expand, faults, flops, schedules, sharding, train

log = logging.getLogger("jaxgrow")


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
    n = [config_lib.non_embedding_param_count(m.model) for m in fam]
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
            index=i, name=m.name, model=m.model, params=config_lib.param_count(m.model), non_embedding_params=n[i],
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


# ----------------------------------------------------------------------------------------------
# Workdir


def stage_dir(workdir: Path, stage: StageBudget) -> Path:
    return Path(workdir, "stages", f"{stage.index}-{stage.name}")


def member_dir(workdir: Path, name: str) -> Path:
    return Path(workdir, "members", name)


def check_workdir_writable(workdir: Path) -> None:
    """Raises ConfigError if the workdir cannot be created or written (creates nothing)."""
    probe = workdir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise config_lib.ConfigError(f"--workdir={workdir} is not writable ({probe} is not a writable directory); "
                                     "choose a directory you can write to")


def check_drift(cfg: Any, workdir: Path) -> None:
    saved_path = Path(workdir, "config.json")
    if not saved_path.exists() or cfg.allow_config_change:
        return
    saved = json.loads(saved_path.read_text())
    changed = config_lib.drift(saved, json.loads(cfg.to_json()))
    if changed:
        raise config_lib.ConfigError(
            f"--workdir={workdir} holds a run with a different config; differing keys: {', '.join(changed)} "
            "(rerun with the saved config, or pass --config.allow_config_change=True)")


def write_config(cfg: Any, workdir: Path) -> None:
    if jax.process_index() != 0:
        return
    path = Path(workdir, "config.json")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(cfg.to_json(indent=2))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# The pipeline


@dataclasses.dataclass
class Setup:
    """What every stage shares: config, mesh, data."""

    cfg: Any
    workdir: Path
    mesh: jax.sharding.Mesh
    corpus: data.Corpus
    eval_batches: list
    stages: list[StageBudget]
    goodput: Any = None  # goodput.Goodput of this process's run (wall time by activity)


def prepare(cfg: Any, workdir: Path) -> Setup:
    """Validates everything that can be wrong with the inputs, then (only then) writes to the workdir."""
    config_lib.validate(cfg)
    stages = budgets(cfg)
    if cfg.mode == "progressive":
        for prev, cur in zip(stages, stages[1:]):
            try:
                expand.check(prev.model, cur.model, cfg.expansion.method, cfg.expansion.depth, cfg.expansion.depth_position)
            except ValueError as e:
                raise config_lib.ConfigError(f"expansion members.{prev.name} -> members.{cur.name}: {e}") from None
    check_workdir_writable(workdir)
    mesh = sharding.make_mesh(cfg.mesh)
    if jax.process_count() > 1:
        log.info("mesh %s over %d processes; axes spanning processes: %s", dict(mesh.shape), jax.process_count(),
                 sharding.axes_spanning_processes(mesh))
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.data.batch_size % (batch_shards * cfg.optimizer.grad_accum_steps):
        raise config_lib.ConfigError(f"data.batch_size={cfg.data.batch_size} must be divisible by mesh data*fsdp="
                                     f"{batch_shards} x optimizer.grad_accum_steps={cfg.optimizer.grad_accum_steps}")
    check_drift(cfg, workdir)
    corpus = data.prepare(cfg.data, cfg.model.vocab_size, workdir if workdir.exists() else None)
    # -- inputs are valid: from here on the workdir is written --
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, workdir)
    if jax.process_index() == 0:
        data.save_cache(corpus, workdir)
    batch_sharding = sharding.batch_sharding(mesh)
    host_batches = data.eval_batches(corpus.eval, cfg.data.seq_len, cfg.data.batch_size, cfg.data.eval_batches,
                                     rows=sharding.process_rows(batch_sharding, cfg.data.batch_size))
    eval_batches = [jax.make_array_from_process_local_data(batch_sharding, b) for b in host_batches]
    return Setup(cfg, workdir, mesh, corpus, eval_batches, stages)


def stage_key(seed: int, index: int, purpose: int) -> jax.Array:
    """Init (purpose 0) and expansion (purpose 1) randomness from the seed and the stage index only."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), index), purpose)


def restore_member(workdir: Path, stage: StageBudget, optimizer, mesh, with_opt: bool = True):
    """(params, opt_state | None, meta) of a finished member, restored onto its shardings."""
    abstract = train.abstract_state(stage.model, optimizer, mesh)
    ckpts = checkpoint.Checkpoints(member_dir(workdir, stage.name))
    step = ckpts.latest_step()
    params, opt_state, meta = ckpts.restore(step, abstract.params, abstract.opt_state if with_opt else None)
    ckpts.close()
    return params, opt_state, meta


def grow(cfg: Any, src_model: Any, dst_model: Any, params: Any, opt_state: Any | None, optimizer, mesh,
         key: jax.Array) -> tuple[Any, Any]:
    """(params, opt_state) of `dst_model`, produced on `mesh` by jitted expansions whose out_shardings
    are the target layout's: nothing is gathered to one host. opt_state=None starts a fresh optimizer
    state (expansion.opt_state = reset); otherwise Adam's moments follow the params."""
    e = cfg.expansion
    kwargs = dict(src_cfg=src_model, dst_cfg=dst_model, method=e.method, depth=e.depth, depth_position=e.depth_position,
                  map_seed=cfg.seed)
    target = jax.tree.map(lambda x: x.sharding, train.abstract_state(dst_model, optimizer, mesh))
    with jax.set_mesh(mesh):
        new_params = jax.jit(functools.partial(expand.expand_params, noise=e.noise, **kwargs),
                             out_shardings=target.params)(params, key=key)
        faults.point("expanding")
        if opt_state is None:
            new_opt = jax.jit(optimizer.init, out_shardings=target.opt_state)(new_params)
        else:
            new_opt = jax.jit(functools.partial(expand.expand_opt_state, **kwargs),
                              out_shardings=target.opt_state)(opt_state, params)
    return new_params, new_opt


def expand_state(setup: Setup, prev: StageBudget, stage: StageBudget, optimizer):
    """The first state of stage k: the previous member grown (randomness from seed and stage index)."""
    cfg = setup.cfg
    carry = cfg.expansion.opt_state == "carry"
    params, opt_state, meta = restore_member(setup.workdir, prev, optimizer, setup.mesh, with_opt=carry)
    new_params, new_opt = grow(cfg, prev.model, stage.model, params, opt_state, optimizer, setup.mesh,
                               stage_key(cfg.seed, stage.index, 1))
    return train.new_state(new_params, new_opt), meta["data_state"], params


def run(cfg: Any, workdir: Path, signals: train.SignalFlag | None = None) -> Setup:
    """Builds (or resumes) the whole family; each finished member lands in members/<name>/."""
    from jaxgrow.goodput import Goodput  # noqa: PLC0415

    gp = Goodput()
    setup = prepare(cfg, workdir)
    setup.goodput = gp
    signals = signals or train.SignalFlag()
    metrics_log = train.MetricsLog(workdir)
    flops_before = 0.0
    try:
        for stage in setup.stages:
            if checkpoint.has_checkpoint(member_dir(workdir, stage.name)):
                log.info("stage %d (%s): member checkpoint exists, skipping", stage.index, stage.name)
                flops_before += stage.train_flops
                continue
            _run_one_stage(setup, stage, flops_before, metrics_log, signals)
            flops_before += stage.train_flops
    finally:
        metrics_log.close()
    return setup


def _run_one_stage(setup: Setup, stage: StageBudget, flops_before: float, metrics_log, signals) -> None:
    cfg, mesh, workdir = setup.cfg, setup.mesh, setup.workdir
    optimizer = train.make_optimizer(cfg.optimizer, stage.model)
    sharding.warn_undivided(stage.model, mesh, f"stage {stage.index} ({stage.name})")
    abstract = train.abstract_state(stage.model, optimizer, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    prev = setup.stages[stage.index - 1] if stage.index > 0 else None
    progressive = cfg.mode == "progressive" and prev is not None

    ckpts = checkpoint.Checkpoints(stage_dir(workdir, stage), keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    restored = ckpts.restore_latest_good(abstract.params, abstract.opt_state)
    teacher_params = None
    if restored is not None:
        params, opt_state, meta = restored
        state = train.TrainState(step=jnp.asarray(meta["step"], jnp.int32), params=params, opt_state=opt_state,
                                 nonfinite=jnp.asarray(meta.get("nonfinite", 0), jnp.int32))
        data_state = meta["data_state"]
        log.info("stage %d (%s): resumed at step %d/%d", stage.index, stage.name, meta["step"], stage.steps)
    elif progressive:
        t0 = time.perf_counter()
        with setup.goodput.measure("expansion") if setup.goodput else _nullcontext():
            state, data_state, teacher_params = expand_state(setup, prev, stage, optimizer)
        log.info("stage %d (%s): expanded %s -> %s (%s/%s) in %.1fs", stage.index, stage.name, prev.name, stage.name,
                 cfg.expansion.method, cfg.expansion.depth, time.perf_counter() - t0)
    else:
        state = train.init_state(stage.model, optimizer, stage_key(cfg.seed, stage.index, 0), mesh)
        data_state = None

    consistency = None
    if progressive and cfg.consistency.weight > 0:
        consistency = train.Consistency(prev.model, cfg.consistency.weight, stage.teacher_active_steps)
        if teacher_params is None:
            teacher_params, _, _ = restore_member(workdir, prev, optimizer, mesh, with_opt=False)
    else:
        teacher_params = None
    step_fn = train.make_train_step(stage.model, optimizer, lr_schedule(cfg, stage),
                                    grad_accum_steps=cfg.optimizer.grad_accum_steps, consistency=consistency)
    teacher_shardings = sharding.param_shardings(prev.model, mesh) if consistency else None
    train_step = train.jit_train_step(step_fn, shardings, mesh, teacher_shardings)
    eval_step = jax.jit(train.make_eval_step(stage.model))

    dataset = data.train_dataset(setup.corpus.train, cfg.data.seq_len, cfg.data.batch_size, cfg.seed,
                                 rows=sharding.process_rows(sharding.batch_sharding(mesh), cfg.data.batch_size))
    data_iter = data.DeviceIterator(dataset, sharding.batch_sharding(mesh), cfg.data.prefetch, data_state)
    per_step = tokens_per_step(cfg)
    spec = train.StageSpec(
        index=stage.index, name=stage.name, model_cfg=stage.model, steps=stage.steps, tokens_per_step=per_step,
        train_flops_per_step=per_step * stage.train_flops_per_token,
        teacher_flops_per_step=per_step * stage.teacher_forward_flops_per_token,
        teacher_active_steps=stage.teacher_active_steps, flops_offset=flops_before,
        meta={"stage": stage.index, "member": stage.name, "mode": cfg.mode, "model": stage.model.to_dict()})
    with jax.set_mesh(mesh):
        state = train.run_stage(spec, state, train_step, eval_step, data_iter, setup.eval_batches, ckpts,
                                metrics_log, cfg, workdir, signals, teacher_params, goodput=setup.goodput)
        with setup.goodput.measure("checkpoint") if setup.goodput else _nullcontext():
            final = checkpoint.Checkpoints(member_dir(workdir, stage.name), async_save=cfg.checkpoint.async_save)
            final.save(stage.steps, state.params, state.opt_state, dict(spec.meta, data_state=data_iter.state(),
                                                                        nonfinite=int(jax.device_get(state.nonfinite))))
            faults.point("member_saving")
            final.close()
    if setup.goodput:
        # no "step": report.read_metrics keys records by (stage, step) and must keep the last loss
        metrics_log.write({"stage": stage.index, "member": stage.name, "goodput": setup.goodput.summary()})
    ckpts.close()
    log.info("stage %d (%s): done, member checkpoint in %s", stage.index, stage.name, member_dir(workdir, stage.name))


def _nullcontext():
    import contextlib  # noqa: PLC0415

    return contextlib.nullcontext()


def load_setup_for_eval(workdir: Path) -> tuple[Any, list[StageBudget]]:
    """The saved config and stage budgets of an existing workdir (for evaluate/report/export)."""
    path = Path(workdir, "config.json")
    if not path.exists():
        raise config_lib.ConfigError(f"--workdir={workdir} holds no run (no config.json); train first")
    cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
    return cfg, budgets(cfg)


def member_params(workdir: Path, stage: StageBudget, mesh=None) -> dict:
    """Final params of a member, restored onto `mesh` (default: all devices, fsdp)."""
    if not checkpoint.has_checkpoint(member_dir(workdir, stage.name)):
        raise config_lib.ConfigError(f"{member_dir(workdir, stage.name)} holds no checkpoint; train the family first")
    mesh = mesh or sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1, "dcn_data": 1}))
    optimizer = train.make_optimizer(config_lib.base_config().optimizer, stage.model)  # only shapes are used
    params, _, _ = restore_member(workdir, stage, optimizer, mesh, with_opt=False)
    return params


def write_report(setup: Setup) -> dict:
    """Evaluates every member (held-out loss, KL to the next) and writes report.json/.md and plots."""
    from jaxgrow import evaluate, report  # noqa: PLC0415

    cfg, stages = setup.cfg, setup.stages
    params = [member_params(setup.workdir, s, setup.mesh) for s in stages]
    evals = []
    with jax.set_mesh(setup.mesh):
        for i, s in enumerate(stages):
            ev = {"eval_loss": evaluate.eval_loss(params[i], s.model, setup.eval_batches),
                  "kl_to_next": None, "kl_from_next": None}
            if i + 1 < len(stages):
                ev["kl_to_next"], ev["kl_from_next"] = evaluate.kl_between(
                    params[i], s.model, params[i + 1], stages[i + 1].model, setup.eval_batches)
            evals.append(ev)
    result = report.build(cfg, stages, evals, budgets(cfg, "independent"))
    if setup.goodput is not None:
        result["goodput"] = setup.goodput.summary()
    if jax.process_index() == 0:
        report.write(setup.workdir, result, stages, [lr_schedule(cfg, s) for s in stages])
    return result
