"""One training stage: the train state, the jitted (sharded, donated) train and eval steps, the loop.

`family/pipeline.py` is the only module that knows there are several stages; here a stage is: a model
config, an initial state, a data iterator, a step count and an LR schedule.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxgrow import storage
from jaxgrow.model import decoder, layout, losses, sharding
from jaxgrow.train import checkpoint, faults, logs
from jaxgrow.train.faults import Preempted, SignalFlag


log = logging.getLogger("jaxgrow")



@flax.struct.dataclass
class TrainState:
    step: jax.Array       # int32 []: updates attempted in this stage (the LR schedule's step)
    params: dict          # float32 master weights (layout.py)
    opt_state: Any        # optax state (no LR counter: the LR is computed from `step`)
    nonfinite: jax.Array  # int32 []: steps skipped in this stage because loss or grads were not finite


class NonFiniteLoss(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# Optimizer, loss, steps


def make_optimizer(opt_cfg: Any, model_cfg: Any) -> optax.GradientTransformation:
    """AdamW without the LR: clip -> Adam -> decoupled weight decay (not on norm gains).

    The train step multiplies the update by -lr(step), so the optimizer state holds no schedule
    counter and can be carried across stages whose schedules differ.
    """
    decay_mask = layout.build_tree(model_cfg, lambda s: "gain" not in s.roles)
    parts = []
    if opt_cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt_cfg.clip_norm))
    parts.append(optax.scale_by_adam(b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps))
    if opt_cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(opt_cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


@dataclasses.dataclass(frozen=True)
class Consistency:
    """Cross-size consistency: + weight(step) * KL(p_teacher || p_student), weight -> 0 linearly.

    weight(step) = weight * max(0, 1 - step / active_steps); the teacher runs only while > 0.
    """

    teacher_cfg: Any
    weight: float
    active_steps: int

    def weight_at(self, step: jax.Array) -> jax.Array:
        frac = step.astype(jnp.float32) / max(self.active_steps, 1)
        return self.weight * jnp.maximum(0.0, 1.0 - frac)


def make_train_step(model_cfg: Any, optimizer: optax.GradientTransformation,
                    schedule: Callable, *, grad_accum_steps: int = 1,
                    consistency: Consistency | None = None, document_eos: int | None = None) -> Callable:
    """(state, batch[B, T+1], teacher_params | None) -> (state, metrics). Pure; jit it.
    document_eos: with an EOS id, packed documents do not attend to each other (data.document_masking)."""

    def loss_fn(params, tokens, teacher_params, weight):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        segments = None if document_eos is None else losses.segment_ids(inputs, document_eos)
        out = decoder.logits(params, model_cfg, inputs, segments)
        ce = losses.cross_entropy(out, targets)
        if consistency is None:
            return ce, (ce, jnp.float32(0.0))

        def with_teacher():
            teacher = decoder.logits(teacher_params, consistency.teacher_cfg, inputs, segments)
            return losses.kl_divergence(jax.lax.stop_gradient(teacher), out)

        kl = jax.lax.cond(weight > 0, with_teacher, lambda: jnp.float32(0.0))
        return ce + weight * kl, (ce, kl)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step_fn(state: TrainState, batch: jax.Array, teacher_params: Any = None):
        weight = consistency.weight_at(state.step) if consistency else jnp.float32(0.0)
        if grad_accum_steps == 1:
            (loss, (ce, kl)), grads = grad_fn(state.params, batch, teacher_params, weight)
        else:
            # Micro-batch j takes every A-th row, so each stays spread over the batch-sharded devices.
            micro = batch.reshape(batch.shape[0] // grad_accum_steps, grad_accum_steps, -1).swapaxes(0, 1)

            def accumulate(carry, tokens):
                (l, (c, k)), g = grad_fn(state.params, tokens, teacher_params, weight)
                return jax.tree.map(jnp.add, carry, (l, c, k, g)), None

            zeros = (jnp.float32(0), jnp.float32(0), jnp.float32(0), jax.tree.map(jnp.zeros_like, state.params))
            (loss, ce, kl, grads), _ = jax.lax.scan(accumulate, zeros, micro)
            loss, ce, kl, grads = jax.tree.map(lambda x: x / grad_accum_steps, (loss, ce, kl, grads))

        grad_norm = optax.global_norm(grads)
        updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
        lr = schedule(state.step)
        new_params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                               opt_state=keep(new_opt, state.opt_state),
                               nonfinite=state.nonfinite + (~finite).astype(jnp.int32))
        metrics = {"loss": ce, "total_loss": loss, "consistency_kl": kl, "consistency_weight": weight,
                   "grad_norm": grad_norm, "lr": lr, "finite": finite, "nonfinite_steps": new_state.nonfinite}
        return new_state, metrics

    return step_fn


# ----------------------------------------------------------------------------------------------
# State creation and sharding


def state_shardings(abstract_state: TrainState, model_cfg: Any, mesh: jax.sharding.Mesh) -> TrainState:
    return sharding.tree_shardings(abstract_state, model_cfg, mesh)


def new_state(params: Any, opt_state: Any) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      nonfinite=jnp.zeros((), jnp.int32))


def init_state(model_cfg: Any, optimizer: optax.GradientTransformation, key: jax.Array,
               mesh: jax.sharding.Mesh) -> TrainState:
    """Fresh state created directly sharded (eval_shape -> shardings -> jit(out_shardings))."""

    def init(k):
        params = decoder.init_params(model_cfg, k)
        return new_state(params, optimizer.init(params))

    abstract = jax.eval_shape(init, key)
    with jax.set_mesh(mesh):
        return jax.jit(init, out_shardings=state_shardings(abstract, model_cfg, mesh))(key)


def abstract_state(model_cfg: Any, optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> TrainState:
    """ShapeDtypeStructs (with shardings) of a state, without allocating it."""
    abstract = jax.eval_shape(lambda k: new_state(p := decoder.init_params(model_cfg, k), optimizer.init(p)),
                              jax.random.key(0))
    shards = state_shardings(abstract, model_cfg, mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shards)


def jit_train_step(step_fn: Callable, shardings: TrainState, mesh: jax.sharding.Mesh,
                   teacher_shardings: Any = None) -> Callable:
    batch = sharding.batch_sharding(mesh)
    in_shardings = (shardings, batch) if teacher_shardings is None else (shardings, batch, teacher_shardings)
    return jax.jit(step_fn, in_shardings=in_shardings, out_shardings=(shardings, sharding.replicated(mesh)),
                   donate_argnums=0)


@dataclasses.dataclass
class CompiledStage:
    """One stage's optimizer, abstract state and jitted steps: what training runs, what `plan`
    analyses and what bench_train times (built by `compile_stage`, the only place that chains
    make_optimizer -> abstract_state -> shardings -> make_train_step -> jit)."""

    model_cfg: Any
    optimizer: optax.GradientTransformation
    abstract: TrainState       # ShapeDtypeStructs with shardings
    shardings: TrainState
    mesh: jax.sharding.Mesh
    train_step: Callable       # jitted (state, batch[, teacher_params]) -> (state, metrics), donates state
    eval_step: Callable        # jitted (params, batch) -> (summed NLL, token count)
    teacher_shardings: Any = None
    teacher_cfg: Any = None

    def batch_spec(self, batch_size: int, seq_len: int) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32, sharding=sharding.batch_sharding(self.mesh))

    def lower(self, batch_size: int, seq_len: int):
        """The train step lowered on abstract inputs (no arrays allocated); `.compile()` it for AOT
        memory analysis."""
        args = (self.abstract, self.batch_spec(batch_size, seq_len))
        if self.teacher_cfg is not None:
            shapes = jax.eval_shape(lambda k: decoder.init_params(self.teacher_cfg, k), jax.random.key(0))
            args += (jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                                  self.teacher_shardings),)
        with jax.set_mesh(self.mesh):
            return self.train_step.lower(*args)


def compile_stage(model_cfg: Any, opt_cfg: Any, schedule: Callable, mesh: jax.sharding.Mesh, *,
                  consistency: Consistency | None = None, document_eos: int | None = None) -> CompiledStage:
    """The optimizer, abstract sharded state and jitted train/eval steps of one stage.

    opt_cfg: config.optimizer (its grad_accum_steps sets the micro-batches). consistency: the
    frozen teacher's KL term; the teacher's params are then the train step's third argument,
    sharded like its own layout. document_eos: with an EOS id, packed documents do not attend to
    each other (data.document_masking).
    """
    optimizer = make_optimizer(opt_cfg, model_cfg)
    abstract = abstract_state(model_cfg, optimizer, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    step_fn = make_train_step(model_cfg, optimizer, schedule, grad_accum_steps=opt_cfg.grad_accum_steps,
                              consistency=consistency, document_eos=document_eos)
    teacher_shardings = sharding.param_shardings(consistency.teacher_cfg, mesh) if consistency else None
    return CompiledStage(model_cfg=model_cfg, optimizer=optimizer, abstract=abstract, shardings=shardings, mesh=mesh,
                         train_step=jit_train_step(step_fn, shardings, mesh, teacher_shardings),
                         eval_step=jax.jit(losses.make_eval_step(model_cfg, document_eos)), teacher_shardings=teacher_shardings,
                         teacher_cfg=consistency.teacher_cfg if consistency else None)


# ----------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class StageSpec:
    """Everything the loop needs to know about one stage."""

    index: int
    name: str
    model_cfg: Any
    steps: int                   # total steps of the stage
    tokens_per_step: int
    train_flops_per_step: float  # analytic (flops.py), student only
    teacher_flops_per_step: float  # forward of the consistency teacher while it is active
    teacher_active_steps: int
    flops_offset: float          # family FLOPs spent before this stage
    meta: checkpoint.Meta        # written into every checkpoint (stage info; data state added at save)
    step_offset: int = 0         # steps of the stages before this one (family-wide step for TensorBoard)

    def flops_at(self, step: int) -> float:
        """Cumulative family FLOPs after `step` steps of this stage."""
        return (self.flops_offset + step * self.train_flops_per_step
                + min(step, self.teacher_active_steps) * self.teacher_flops_per_step)


def run_stage(spec: StageSpec, state: TrainState, train_step: Callable, eval_step: Callable,
              data_iter: Any, eval_batches: list, ckpts: checkpoint.Checkpoints, metrics_log: logs.MetricsLog,
              run_cfg: Any, workdir: Path, signals: SignalFlag, teacher_params: Any = None,
              goodput: Any = None, after_eval: Callable[[int, Any, dict], bool] | None = None) -> TrainState:
    """Trains `state` from its step to spec.steps, checkpointing, logging and evaluating.

    Host syncs happen only at log, eval and checkpoint intervals. Raises Preempted after saving when
    SIGTERM/SIGINT arrived, NonFiniteLoss (without saving) when more than
    run_cfg.skip_nonfinite_steps steps were non-finite.
    """
    from tqdm import tqdm  # noqa: PLC0415

    from jaxgrow.train.goodput import Goodput  # noqa: PLC0415

    gp = goodput if goodput is not None else Goodput()
    start = int(jax.device_get(state.step))
    log_every, eval_every = run_cfg.log.every_steps, run_cfg.log.eval_every_steps
    ckpt_every = run_cfg.checkpoint.every_steps
    profile = tuple(int(x) for x in run_cfg.profile_steps.split(":")) if run_cfg.profile_steps else None
    extra = (teacher_params,) if teacher_params is not None else ()
    bar = tqdm(total=spec.steps, initial=start, desc=f"stage {spec.index} {spec.name}", unit="step",
               disable=not (run_cfg.log.progress and jax.process_index() == 0), dynamic_ncols=True)
    t_last, step_last = time.perf_counter(), start
    base = {"stage": spec.index, "member": spec.name, "step_offset": spec.step_offset}
    multi_host = jax.process_count() > 1

    def save(step: int):
        ckpts.save(step, state.params, state.opt_state,
                   spec.meta.replace(data_state=data_iter.state(), nonfinite=int(jax.device_get(state.nonfinite))))
        faults.point("checkpoint_saving")

    def check_finite(step: int):
        bad = int(jax.device_get(state.nonfinite))
        if bad > run_cfg.skip_nonfinite_steps:
            raise NonFiniteLoss(f"non-finite loss or gradients at or before step {step} of stage {spec.index} "
                                f"({spec.name}): {bad} bad step(s) > skip_nonfinite_steps={run_cfg.skip_nonfinite_steps}; "
                                f"the last good checkpoint is kept in {ckpts.directory}")

    for step in range(start, spec.steps):
        t_iter, measured = time.perf_counter(), sum(gp.seconds.values())
        if profile and step == profile[0]:
            profile_dir = storage.join(workdir, "profile", f"{spec.index}-{spec.name}")
            # the profiler writes local files: a remote workdir gets the trace uploaded when it stops
            trace_dir = tempfile.mkdtemp(prefix="jaxgrow-profile-") if storage.is_remote(workdir) else str(profile_dir)
            jax.profiler.start_trace(trace_dir)
        with gp.measure("data"):
            batch = next(data_iter)
        if step == start:  # the first call traces and compiles
            with gp.measure("compile"):
                state, metrics = jax.block_until_ready(train_step(state, batch, *extra))
        else:
            state, metrics = train_step(state, batch, *extra)
        faults.point("train_step")
        done = step + 1
        if profile and done == profile[1]:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            if trace_dir != str(profile_dir):
                storage.upload_tree(trace_dir, profile_dir)
                shutil.rmtree(trace_dir, ignore_errors=True)
        bar.update(1)

        if done % log_every == 0 or done == spec.steps:
            m = jax.device_get(metrics)
            check_finite(done)
            now = time.perf_counter()
            tps = (done - step_last) * spec.tokens_per_step / max(now - t_last, 1e-9)
            t_last, step_last = now, done
            record = dict(base, step=done, loss=float(m["loss"]), lr=float(m["lr"]), grad_norm=float(m["grad_norm"]),
                          tokens_per_sec=tps, train_flops=spec.flops_at(done))
            if teacher_params is not None:
                record.update(consistency_kl=float(m["consistency_kl"]), consistency_weight=float(m["consistency_weight"]))
            record.update(getattr(data_iter, "log_fields", dict)())  # tokens per mixture source
            if int(m["nonfinite_steps"]):
                record["nonfinite_steps"] = int(m["nonfinite_steps"])
            metrics_log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")

        if done % eval_every == 0 or done == spec.steps:
            jax.block_until_ready(state)  # the steps' time is train time, not eval time
            with gp.measure("eval"):
                loss = losses.evaluate_loss(eval_step, state.params, eval_batches)
            metrics_log.write(dict(base, step=done, eval_loss=loss, eval_ppl=math.exp(min(loss, 50.0)),
                                   train_flops=spec.flops_at(done)))
            t_last = time.perf_counter()  # keep eval time out of tokens_per_sec
        if after_eval is not None:  # e.g. the in-loop benchmark suite (family passes benchmarks.in_loop)
            with gp.measure("eval"):
                ran = after_eval(done, state.params, dict(base, train_flops=spec.flops_at(done)))
            if ran:
                t_last = time.perf_counter()

        stop = signals.signum is not None or (multi_host and ckpts.reached_preemption(done))
        if done % ckpt_every == 0 or done == spec.steps or stop:
            check_finite(done)
            jax.block_until_ready(state)
            with gp.measure("checkpoint"):
                save(done)
            t_last = time.perf_counter()
        gp.add("train", time.perf_counter() - t_iter - (sum(gp.seconds.values()) - measured))
        if stop:
            ckpts.wait()
            bar.close()
            raise Preempted(signals.signum or signal.SIGTERM)
    bar.close()
    with gp.measure("checkpoint"):
        ckpts.wait()
    return state
