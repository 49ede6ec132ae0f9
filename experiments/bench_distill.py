"""What a distillation step costs, measured against what its FLOPs say, in one process.

    python experiments/bench_distill.py --config configs/family_cpu.py [--student m1] [--teacher m4] [--steps 10]
        [--out experiments/results/cpu/bench_distill.json]

A distillation stage's train step runs the frozen teacher's forward beside the student's forward and backward
(trainer.Distill, the loss of every pruned row and of `+distil(T)` rows). Its FLOPs per token are the student's
train FLOPs plus the teacher's forward FLOPs (jaxgrow/model/flops.py), which the stage's budget charges. Prints and
saves: the median time of a plain train step of the student and of its distillation step (the same batch, the same
compiled shapes, teacher params sharded like the student's), their measured ratio, the analytic ratio
(F_train(student) + F_forward(teacher)) / F_train(student), and measured / analytic (goal: within 10%: the teacher
costs what its FLOPs say, and no more). FLOPs are not seconds on every backend, though: a forward of a wider model
runs its larger matmuls at a higher rate than a small model's train step, so the benchmark also times the teacher's
forward alone (jitted, same batch and shardings) and reports how much of it the distillation step adds:
(distill − plain) ÷ teacher forward alone, 1.0 when the teacher costs exactly its own forward and nothing more.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

import common
from jaxgrow.family import checks
from jaxgrow.family.budgets import budgets, lr_schedule
from jaxgrow.model import decoder, flops, sharding
from jaxgrow.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config", lock_config=True)
flags.DEFINE_string("student", None, "student member (default: the smallest)")
flags.DEFINE_string("teacher", None, "teacher member (default: the largest)")
flags.DEFINE_integer("steps", 10, "timed steps of each kind (median reported)")
flags.DEFINE_string("out", "experiments/results/cpu/bench_distill.json", "raw JSON output")
FLAGS = flags.FLAGS


def timed_steps(compiled, state, batch, extra, steps: int) -> float:
    """Median seconds of one train step (the compiled step donates its state: each call gets the last output)."""
    holder = {"state": state}

    def one():
        holder["state"], metrics = compiled.train_step(holder["state"], batch, *extra)
        return metrics

    return common.median_seconds(one, steps, warmup=2)


def main(_):
    cfg = _CONFIG.value
    checks.validate(cfg)
    stages = budgets(cfg, "independent")
    student = common.pick_stage(stages, FLAGS.student or stages[0].name)
    teacher = common.pick_stage(stages, FLAGS.teacher)
    seq, batch_size = cfg.data.seq_len, cfg.data.batch_size
    mesh = sharding.make_mesh(cfg.mesh)
    schedule = lr_schedule(cfg, student)
    distill = trainer.Distill(teacher.model, 1.0, active_steps=1 << 30)
    plain = trainer.compile_stage(student.model, cfg.optimizer, schedule, mesh)
    with_teacher = trainer.compile_stage(student.model, cfg.optimizer, schedule, mesh, distill=distill)
    key = jax.random.key(0)
    batch = jax.device_put(jax.random.randint(key, (batch_size, seq + 1), 0, student.model.vocab_size, jnp.int32),
                           sharding.batch_sharding(mesh))
    teacher_params = jax.jit(lambda k: decoder.init_params(teacher.model, k),
                             out_shardings=with_teacher.teacher_shardings)(jax.random.key(1))
    results = {}
    with jax.set_mesh(mesh):
        for name, compiled, extra in (("plain", plain, ()), ("distill", with_teacher, (teacher_params,))):
            state = trainer.init_state(student.model, compiled.optimizer, key, mesh)
            t0 = time.perf_counter()
            jax.block_until_ready(compiled.train_step(state, batch, *extra))  # compile (donates `state`)
            compile_s = time.perf_counter() - t0
            state = trainer.init_state(student.model, compiled.optimizer, key, mesh)
            results[name] = {"median_step_s": timed_steps(compiled, state, batch, extra, FLAGS.steps),
                             "compile_s": compile_s}
        forward = jax.jit(lambda p, b: decoder.logits(p, teacher.model, b[:, :-1]))
        results["teacher_forward_alone"] = {"median_step_s": common.median_seconds(
            lambda: forward(teacher_params, batch), FLAGS.steps, warmup=2)}
    added = (results["distill"]["median_step_s"] - results["plain"]["median_step_s"])
    added_over_forward = added / results["teacher_forward_alone"]["median_step_s"]
    f_train = flops.train_flops_per_token(student.model, seq)
    f_teacher = flops.forward_flops_per_token(teacher.model, seq)
    measured = results["distill"]["median_step_s"] / results["plain"]["median_step_s"]
    analytic = (f_train + f_teacher) / f_train
    out = {"config": str(FLAGS.config), "student": student.name, "teacher": teacher.name,
           "student_train_flops_per_token": f_train, "teacher_forward_flops_per_token": f_teacher,
           "batch": [batch_size, seq], "steps": FLAGS.steps, "backend": jax.default_backend(),
           "devices": len(jax.devices()), "plain": results["plain"], "distill": results["distill"],
           "measured_ratio": measured, "analytic_ratio": analytic, "measured_over_analytic": measured / analytic,
           "within_10_percent": abs(measured / analytic - 1) <= 0.10,
           "teacher_forward_alone": results["teacher_forward_alone"],
           "added_by_teacher_over_its_forward_alone": added_over_forward}
    Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.out).write_text(json.dumps(out, indent=2))
    print(f"student {student.name} ({f_train:.3g} train FLOPs/token), teacher {teacher.name} "
          f"({f_teacher:.3g} forward FLOPs/token), batch {batch_size} x {seq} on {len(jax.devices())} "
          f"{jax.default_backend()} device(s)")
    print(f"plain step {results['plain']['median_step_s'] * 1e3:.1f} ms, distillation step "
          f"{results['distill']['median_step_s'] * 1e3:.1f} ms: measured ratio {measured:.3f}, analytic {analytic:.3f}, "
          f"measured / analytic {measured / analytic:.3f} ({'within' if out['within_10_percent'] else 'outside'} 10%)")
    print(f"the teacher's forward alone {results['teacher_forward_alone']['median_step_s'] * 1e3:.1f} ms; the "
          f"distillation step adds {added * 1e3:.1f} ms = {added_over_forward:.3f} x that forward")
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
