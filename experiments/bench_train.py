"""Train-step efficiency, measured in one process.

    python experiments/bench_train.py --config configs/family_cpu.py [--member NAME] [--steps 10]
        [--config.model.dtype=bfloat16 --config.model.remat_policy=dots ...]

Prints (all measured in this run):
  matmul FLOP/s     a dense n x n matmul (4096 f32 on CPU, 8192 bf16 on GPU/TPU): the practical peak
  model FLOP/s      analytic train FLOPs (jaxgrow/model/flops.py) per step / median step time after compile
  ratio             model FLOP/s / matmul FLOP/s
  MFU               on GPU/TPU: model FLOP/s / the chip's published bf16 dense peak (DESIGN.md §7)
  pipeline ratio    tokens/s the grain pipeline alone produces / tokens/s the train step consumes
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import common
from jaxgrow.data import corpus as corpus_lib
from jaxgrow.data import pipeline
from jaxgrow.family import checks
from jaxgrow.family.budgets import budgets, lr_schedule
from jaxgrow.model import flops
from jaxgrow.model import sharding
from jaxgrow.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config", lock_config=True)
flags.DEFINE_string("member", None, "member to benchmark (default: the largest)")
flags.DEFINE_integer("steps", 10, "timed steps (median reported)")
flags.DEFINE_integer("matmul_n", 0, "matmul size (0: 4096 on CPU, 8192 elsewhere)")
flags.DEFINE_integer("pipeline_batches", 50, "batches drawn from the pipeline alone")
FLAGS = flags.FLAGS

# bf16 dense peak per chip, TFLOP/s (DESIGN.md §7)
PEAK_TFLOPS = {"v5 lite": 197, "v5e": 197, "v5p": 459, "v6 lite": 918, "v6e": 918, "h100": 989, "h200": 989}


def chip_peak() -> float | None:
    kind = jax.devices()[0].device_kind.lower()
    for key, tflops in PEAK_TFLOPS.items():
        if key in kind:
            return tflops * 1e12
    return None


def main(_):
    cfg = _CONFIG.value
    checks.validate(cfg)
    stages = budgets(cfg)
    stage = common.pick_stage(stages, FLAGS.member)
    platform = jax.devices()[0].platform
    n, mm_dtype = common.matmul_reference(FLAGS.matmul_n)
    mm = common.matmul_flops_per_sec(n, mm_dtype)

    mesh = sharding.make_mesh(cfg.mesh)
    compiled = trainer.compile_stage(stage.model, cfg.optimizer, lr_schedule(cfg, stage), mesh)
    state = trainer.init_state(stage.model, compiled.optimizer, jax.random.key(0), mesh)
    step = compiled.train_step
    rng = np.random.default_rng(0)
    batch = jax.device_put(rng.integers(0, stage.model.vocab_size, (cfg.data.batch_size, cfg.data.seq_len + 1),
                                        dtype=np.int32), sharding.batch_sharding(mesh))
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics["loss"]

    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        jax.block_until_ready(one_step())
        compile_s = time.perf_counter() - t0
        step_s = common.median_seconds(one_step, FLAGS.steps, warmup=1)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    model_flops = stage.train_flops_per_token * tokens_per_step / step_s
    train_tps = tokens_per_step / step_s

    corpus = corpus_lib.prepare(cfg.data, cfg.model.vocab_size, None)
    ds = pipeline.train_dataset(corpus.train, cfg.data.seq_len, cfg.data.batch_size, cfg.seed)
    it = iter(ds.to_iter_dataset())
    next(it)
    t0 = time.perf_counter()
    for _ in range(FLAGS.pipeline_batches):
        next(it)
    pipe_tps = FLAGS.pipeline_batches * tokens_per_step / (time.perf_counter() - t0)

    m = stage.model
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({platform}); mesh {dict(mesh.shape)}")
    print(f"member {stage.name}: {stage.params / 1e6:.2f}M params ({stage.non_embedding_params / 1e6:.2f}M non-embedding), "
          f"D={m.hidden_size} F={m.ffn_size} L={m.num_layers} H={m.num_heads} K={m.num_kv_heads} d={m.head_dim}, "
          f"batch {cfg.data.batch_size} x seq {cfg.data.seq_len}, dtype {m.dtype}, remat {m.remat_policy}, "
          f"attention {m.attention_impl}")
    print(f"compile {compile_s:.1f}s; step {1e3 * step_s:.1f} ms (median of {FLAGS.steps}); {train_tps:,.0f} tokens/s")
    print(f"matmul {n}x{n} {jnp.dtype(mm_dtype).name}: {mm / 1e9:,.1f} GFLOP/s")
    print(f"model: {model_flops / 1e9:,.1f} GFLOP/s ({stage.train_flops_per_token / 1e6:.2f} MFLOP/token, {flops.CONVENTION})")
    print(f"ratio model/matmul: {model_flops / mm:.3f}")
    peak = chip_peak()
    if peak and platform != "cpu":
        print(f"MFU vs {peak / 1e12:.0f} TFLOP/s bf16 peak: {model_flops / jax.device_count() / peak:.3f}")
    print(f"pipeline: {pipe_tps:,.0f} tokens/s alone; ratio pipeline/training: {pipe_tps / train_tps:.1f}")


if __name__ == "__main__":
    app.run(main)
