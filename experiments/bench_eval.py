"""Benchmark-scoring speed, measured in one process.

    python experiments/bench_eval.py --config configs/family_cpu.py [--member NAME] [--limit 5] [--suite core]
        [--workdir W]   # score W's trained member instead of a randomly initialised one

Prints (all measured in this run, on the items of `--suite` limited to `--limit` per task, MMLU per subject):
  items/s, requests/s   per task and overall, timed on a second pass after a warm-up pass compiled every shape
  model FLOP/s          analytic forward FLOPs (jaxgrow/model/flops.py) of the real (unpadded) input tokens / time
  matmul FLOP/s         a dense n x n matmul in the same process (4096 f32 on CPU, 8192 bf16 elsewhere)
  ratio                 model FLOP/s / matmul FLOP/s
Without --workdir the member is randomly initialised with the member's exact shape: speed does not
depend on the weights, and the tokenizer is trained on the config's corpus as a run would.
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
from jaxgrow.data import corpus
from jaxgrow.eval.benchmarks import requests as bench_requests
from jaxgrow.eval.benchmarks import scoring as bench_scoring
from jaxgrow.eval.benchmarks import tasks as bench_tasks
from jaxgrow.family import budgets
from jaxgrow.family import checks
from jaxgrow.family import evaluation
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.model import decoder
from jaxgrow.model import flops
from jaxgrow.model import sharding

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config", lock_config=True)
flags.DEFINE_string("member", None, "member to benchmark (default: the largest)")
flags.DEFINE_string("suite", "core", "suite or tasks")
flags.DEFINE_integer("limit", 5, "items per task (MMLU: per subject)")
flags.DEFINE_string("workdir", None, "score this run's trained member (default: random init)")
flags.DEFINE_integer("matmul_n", 0, "matmul size (0: 4096 on CPU, 8192 elsewhere)")
flags.DEFINE_string("json_out", None, "also write the numbers as JSON here")
FLAGS = flags.FLAGS


def main(_):
    cfg = _CONFIG.value
    checks.validate(cfg)
    stages = budgets.budgets(cfg)
    stage = common.pick_stage(stages, FLAGS.member)
    m = stage.model
    platform = jax.devices()[0].platform
    mesh = sharding.make_mesh(cfg.mesh)
    if FLAGS.workdir:
        params = workdir_lib.member_params(Path(FLAGS.workdir).absolute(), stage, mesh)
        tok = evaluation.run_tokenizer(Path(FLAGS.workdir), cfg).tokenizer
        source = f"trained member from {FLAGS.workdir}"
    else:
        params = decoder.init_params(m, jax.random.key(0))
        params = jax.device_put(params, sharding.tree_shardings(params, m, mesh))
        tok = corpus.prepare(cfg.data, cfg.model.vocab_size, None).tokenizer
        source = "randomly initialised (same shape)"
    suites = bench_tasks.parse_suites(FLAGS.suite)
    tasks = [t for ts in suites.values() for t in ts]
    items = {t: bench_tasks.load_items(t, 0, FLAGS.limit) for t in tasks}

    per_task, total_s, total_items, total_req, total_flops = {}, 0.0, 0, 0, 0.0
    for t in tasks:
        requests = [(c, x) for it in items[t] for c, x in zip(it.contexts, it.continuations)]
        rows = bench_requests.request_rows(bench_requests.encode_requests(tok, requests), bench_requests.MAX_LENGTH)
        task_flops = sum(len(r.inputs) * flops.forward_flops_per_token(m, len(r.inputs)) for r in rows)
        bench_scoring.score_task(params, m, tok, t, items[t], mesh, progress=False)  # warm-up: compiles every shape
        t0 = time.perf_counter()
        metrics, _ = bench_scoring.score_task(params, m, tok, t, items[t], mesh, progress=False)
        dt = time.perf_counter() - t0
        per_task[t] = {"items": len(items[t]), "requests": len(requests), "rows": len(rows), "seconds": dt,
                       "items_per_s": len(items[t]) / dt, "model_flops_per_s": task_flops / dt}
        total_s += dt
        total_items += len(items[t])
        total_req += len(requests)
        total_flops += task_flops
    n, mm_dtype = common.matmul_reference(FLAGS.matmul_n)
    mm = common.matmul_flops_per_sec(n, mm_dtype)
    model_fps = total_flops / total_s

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({platform}); mesh {dict(mesh.shape)}")
    print(f"member {stage.name}: {stage.params / 1e6:.2f}M params, D={m.hidden_size} F={m.ffn_size} L={m.num_layers} "
          f"H={m.num_heads} K={m.num_kv_heads} d={m.head_dim}, dtype {m.dtype}; {source}")
    print(f"suite {FLAGS.suite}, --limit {FLAGS.limit} per task (MMLU per subject), zero-shot; timed pass after a "
          "warm-up pass")
    for t, r in per_task.items():
        print(f"  {t:14s} {r['items']:5d} items {r['requests']:6d} requests {r['rows']:6d} rows  {r['seconds']:7.2f}s  "
              f"{r['items_per_s']:8.1f} items/s  {r['model_flops_per_s'] / 1e9:7.2f} GFLOP/s")
    print(f"total: {total_items} items, {total_req} requests in {total_s:.2f}s: {total_items / total_s:.1f} items/s, "
          f"{total_req / total_s:.1f} requests/s")
    print(f"model (forward, unpadded tokens): {model_fps / 1e9:.2f} GFLOP/s")
    print(f"matmul {n}x{n} {jnp.dtype(mm_dtype).name}: {mm / 1e9:.1f} GFLOP/s")
    print(f"ratio model/matmul: {model_fps / mm:.3f}")
    if FLAGS.json_out:
        Path(FLAGS.json_out).write_text(json.dumps({
            "device": jax.devices()[0].device_kind, "platform": platform, "member": stage.name, "source": source,
            "suite": FLAGS.suite, "limit": FLAGS.limit, "per_task": per_task, "items_per_s": total_items / total_s,
            "requests_per_s": total_req / total_s, "model_flops_per_s": model_fps, "matmul_flops_per_s": mm,
            "ratio": model_fps / mm}, indent=2))


if __name__ == "__main__":
    app.run(main)
