"""What carrying Adam's moments through an expansion is worth, measured in one run.

    python experiments/moment_carry.py [--seeds 0,1,2] [--src_steps 150] [--steps 50] [--out experiments/results/cpu/moment_carry.json]

A small model (family_tiny's `small` member) trains on the Shakespeare corpus, is grown once, and then trains
`--steps` more steps twice from the same grown parameters and the same batches, differing only in the optimizer
state (`expand.expand_opt_state`'s two policies):
    reset        moments 0 and Adam's count 0 (expansion.opt_state=reset)
    carry        moments scaled like the gradients (the default; exact where the map is)
Each (method, warmup) pair is run for every seed; printed and saved: mean train loss over steps 1-10 and
1-50 after the expansion, held-out loss at the end, and the paired difference to `carry` with its 95% t-interval.
Training is the trainer's own: `trainer.compile_stage` (the jitted, sharded train and eval steps a family stage
runs) on the base config's mesh, data shape (batch 16 x 128 tokens) and optimizer, and the run's held-out batches
(`pipeline.device_eval_batches`) scored by `losses.evaluate_loss`. (Results before issue #32 also had a third
policy, `param_scale`, the rule before issue #15; the package no longer has it.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxgrow import config as config_lib
from jaxgrow import expand
from jaxgrow.data import corpus as corpus_lib
from jaxgrow.data import pipeline
from jaxgrow.eval import stats
from jaxgrow.model import decoder
from jaxgrow.model import losses as losses_lib
from jaxgrow.model import sharding
from jaxgrow.train import trainer

flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds (init, data order)")
flags.DEFINE_integer("src_steps", 150, "steps the source model trains before the expansion")
flags.DEFINE_integer("steps", 50, "steps measured after the expansion")
flags.DEFINE_float("lr", 3e-3, "peak LR (both phases)")
flags.DEFINE_string("out", "experiments/results/cpu/moment_carry.json", "raw JSON output")
FLAGS = flags.FLAGS

POLICIES = ("reset", "carry")
SRC = dict(vocab_size=2048, head_dim=32, num_kv_heads=1, hidden_size=64, ffn_size=192, num_layers=2, num_heads=2)
# tile: every width x2 (the case where the old rule was off by 2 for mu and 4 for nu on the embedding, gains and
# LM head); zero: family_tiny's small -> medium step.
GROWTHS = {
    "tile": dict(hidden_size=128, ffn_size=384, num_heads=4, num_kv_heads=2),
    "zero": dict(hidden_size=96, ffn_size=256, num_layers=3, num_heads=3),
}
WARMUPS = (0, 10)  # steps of linear warmup after the expansion (the family re-warms; 0 shows the raw effect)


def schedule(peak: float, warmup: int):
    return lambda step: jnp.where(step < warmup, peak * (step + 1) / max(warmup, 1), peak).astype(jnp.float32)


_COMPILED: dict = {}


def compiled(name: str, model_cfg, cfg, warmup: int, mesh) -> trainer.CompiledStage:
    """The stage's jitted train and eval steps, compiled once per program across seeds (same shapes and schedule)."""
    if name not in _COMPILED:
        _COMPILED[name] = trainer.compile_stage(model_cfg, cfg.optimizer, schedule(FLAGS.lr, warmup), mesh)
    return _COMPILED[name]


def placed(stage: trainer.CompiledStage, params, opt_state) -> trainer.TrainState:
    """A fresh train state of `stage`, laid out as its train step takes it. Copied first: the step donates its state,
    and the grown params (and a carried count) are shared by every policy's run."""
    return jax.device_put(jax.tree.map(jnp.copy, trainer.new_state(params, opt_state)), stage.shardings)


def run_seed(seed: int, corpus: corpus_lib.Corpus, cfg, mesh, evals: list) -> dict:
    src = config_lib.model_config(**SRC)
    batches = iter(pipeline.train_dataset(corpus.train, cfg.data.seq_len, cfg.data.batch_size, seed))
    src_stage = compiled("src", src, cfg, 10, mesh)
    params = decoder.init_params(src, jax.random.key(seed))
    state = placed(src_stage, params, src_stage.optimizer.init(params))
    for _ in range(FLAGS.src_steps):
        state, _ = src_stage.train_step(state, next(batches))
    after = [next(batches) for _ in range(FLAGS.steps)]
    out = {}
    for method, growth in GROWTHS.items():
        dst = config_lib.model_config(**{**SRC, **growth})
        grown = expand.expand_params(state.params, src, dst, method=method, key=jax.random.key(1000 + seed))
        for warmup in WARMUPS:
            dst_stage = compiled(f"{method}/{warmup}", dst, cfg, warmup, mesh)
            for policy in POLICIES:
                opt_state = expand.expand_opt_state(state.opt_state, state.params, src, dst, method=method,
                                                    policy=policy)
                s = placed(dst_stage, grown, opt_state)
                losses = []
                for batch in after:
                    s, metrics = dst_stage.train_step(s, batch)
                    losses.append(float(metrics["loss"]))
                out[f"{method}/warmup{warmup}/{policy}"] = {
                    "train_loss": losses, "eval_loss_end": losses_lib.evaluate_loss(dst_stage.eval_step, s.params, evals)}
    return out


def main(_):
    seeds = stats.parse_seeds(",".join(FLAGS.seeds))
    cfg = config_lib.base_config()  # data: batch 16 x 128 tokens, 8 held-out batches; the default optimizer and mesh
    corpus = corpus_lib.prepare(cfg.data, SRC["vocab_size"], None)
    mesh = sharding.make_mesh(cfg.mesh)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        evals = pipeline.device_eval_batches(corpus.eval, cfg.data, mesh)
        runs = {seed: run_seed(seed, corpus, cfg, mesh, evals) for seed in seeds}
    table = []
    for method in GROWTHS:
        for warmup in WARMUPS:
            row = {"method": method, "warmup_steps": warmup}
            for policy in POLICIES:
                key = f"{method}/warmup{warmup}/{policy}"
                first10 = [float(np.mean(runs[s][key]["train_loss"][:10])) for s in seeds]
                all50 = [float(np.mean(runs[s][key]["train_loss"])) for s in seeds]
                end = [runs[s][key]["eval_loss_end"] for s in seeds]
                row[policy] = {"loss_first10": stats.mean_ci(first10), "loss_all": stats.mean_ci(all50),
                               "eval_loss_end": stats.mean_ci(end)}
                if policy != "carry":
                    ref = f"{method}/warmup{warmup}/carry"
                    row[policy]["minus_carry_loss_all"] = stats.mean_ci(
                        [a - float(np.mean(runs[s][ref]["train_loss"])) for a, s in zip(all50, seeds)])
                    row[policy]["minus_carry_loss_first10"] = stats.mean_ci(
                        [a - float(np.mean(runs[s][ref]["train_loss"][:10])) for a, s in zip(first10, seeds)])
            table.append(row)
    result = {"seeds": seeds, "src_steps": FLAGS.src_steps, "steps_after": FLAGS.steps, "lr": FLAGS.lr,
              "src_model": SRC, "growths": GROWTHS, "table": table, "runs": {str(k): v for k, v in runs.items()},
              "wall_s": time.perf_counter() - t0, "backend": jax.default_backend()}
    Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.out).write_text(json.dumps(result, indent=1))
    print(f"| method | warmup | policy | mean loss steps 1-10 | mean loss steps 1-{FLAGS.steps} | "
          f"minus carry (1-{FLAGS.steps}, 95% CI) | eval loss at end |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for row in table:
        for policy in POLICIES:
            r = row[policy]
            diff = r.get("minus_carry_loss_all")
            d = "—" if diff is None or diff["ci95"] is None else f"{diff['mean']:+.4f} [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}]"
            print(f"| {row['method']} | {row['warmup_steps']} | {policy} | {r['loss_first10']['mean']:.4f} | "
                  f"{r['loss_all']['mean']:.4f} | {d} | {r['eval_loss_end']['mean']:.4f} |")
    print(f"wrote {FLAGS.out} ({result['wall_s']:.0f}s)")


if __name__ == "__main__":
    app.run(main)
