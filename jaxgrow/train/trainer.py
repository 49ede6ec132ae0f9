"""One training stage's state and steps: the train state, the optimizer, the loss (cross-entropy, optionally with a
frozen teacher's distillation term), the jitted (sharded, donated) train and eval steps. The loop that runs them is
`loop.py`; `family/` is the only wing that knows there are several stages.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxgrow.model import decoder, layout, losses, sharding


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
class Distill:
    """Distillation from a frozen teacher: loss = ce_weight * CE + weight(step) * T^2 * KL(p_teacher^T || p_student^T).

    Forward KL over the full vocabulary at temperature T (both distributions softened by T; the T^2 keeps the
    gradient's scale independent of T, Hinton et al. 2015). weight(step) is constant (`decay_steps` = 0) or decays
    linearly to 0 over the first `decay_steps` steps (cross-size consistency, the progressive family's knob); the
    teacher's forward runs only while the weight is > 0. `active_steps` is how many steps it runs: what the FLOPs
    accounting charges for the teacher.
    """

    teacher_cfg: Any
    weight: float
    active_steps: int
    temperature: float = 1.0
    ce_weight: float = 1.0
    decay_steps: int = 0

    def weight_at(self, step: jax.Array) -> jax.Array:
        if self.decay_steps <= 0:
            return jnp.where(step < self.active_steps, jnp.float32(self.weight), jnp.float32(0.0))
        frac = step.astype(jnp.float32) / self.decay_steps
        return self.weight * jnp.maximum(0.0, 1.0 - frac)

    def kl(self, teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
        t = self.temperature
        return t * t * losses.kl_divergence(jax.lax.stop_gradient(teacher_logits) / t, student_logits / t)


def Consistency(teacher_cfg: Any, weight: float, active_steps: int) -> Distill:  # noqa: N802  (a Distill preset)
    """Cross-size consistency: KL to the previous member whose weight decays linearly to 0 over active_steps."""
    return Distill(teacher_cfg, weight, active_steps, decay_steps=max(int(active_steps), 1))


def make_train_step(model_cfg: Any, optimizer: optax.GradientTransformation,
                    schedule: Callable, *, grad_accum_steps: int = 1,
                    distill: Distill | None = None, document_eos: int | None = None) -> Callable:
    """(state, batch[B, T+1], teacher_params | None) -> (state, metrics). Pure; jit it.
    distill: a frozen teacher's KL term (its params are then the step's third argument).
    document_eos: with an EOS id, packed documents do not attend to each other (data.document_masking)."""

    def loss_fn(params, tokens, teacher_params, weight):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        segments = None if document_eos is None else losses.segment_ids(inputs, document_eos)
        out = decoder.logits(params, model_cfg, inputs, segments)
        ce = losses.cross_entropy(out, targets)
        if distill is None:
            return ce, (ce, jnp.float32(0.0))

        def with_teacher():
            return distill.kl(decoder.logits(teacher_params, distill.teacher_cfg, inputs, segments), out)

        kl = jax.lax.cond(weight > 0, with_teacher, lambda: jnp.float32(0.0))
        return distill.ce_weight * ce + weight * kl, (ce, kl)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step_fn(state: TrainState, batch: jax.Array, teacher_params: Any = None):
        weight = distill.weight_at(state.step) if distill else jnp.float32(0.0)
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
        metrics = {"loss": ce, "total_loss": loss, "distill_kl": kl, "distill_weight": weight,
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
                  distill: Distill | None = None, document_eos: int | None = None) -> CompiledStage:
    """The optimizer, abstract sharded state and jitted train/eval steps of one stage.

    opt_cfg: config.optimizer (its grad_accum_steps sets the micro-batches). distill: the frozen
    teacher's KL term; the teacher's params are then the train step's third argument, sharded like
    its own layout on the same mesh (the teacher's forward is sharded like the student's). document_eos: with an EOS id, packed documents do not attend to
    each other (data.document_masking).
    """
    optimizer = make_optimizer(opt_cfg, model_cfg)
    abstract = abstract_state(model_cfg, optimizer, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    step_fn = make_train_step(model_cfg, optimizer, schedule, grad_accum_steps=opt_cfg.grad_accum_steps,
                              distill=distill, document_eos=document_eos)
    teacher_shardings = sharding.param_shardings(distill.teacher_cfg, mesh) if distill else None
    return CompiledStage(model_cfg=model_cfg, optimizer=optimizer, abstract=abstract, shardings=shardings, mesh=mesh,
                         train_step=jit_train_step(step_fn, shardings, mesh, teacher_shardings),
                         eval_step=jax.jit(losses.make_eval_step(model_cfg, document_eos)), teacher_shardings=teacher_shardings,
                         teacher_cfg=distill.teacher_cfg if distill else None)
