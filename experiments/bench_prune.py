"""Pruning bandwidth and the cost of importance scoring, measured in one process.

    python experiments/bench_prune.py [--out experiments/results/cpu/bench_prune.json] [--reps 7] [--scale 1.0]

Prunes a ~500M-parameter Llama-style model (vocab 32000, hidden 1536, FFN 4096, 24/8 heads, 16 layers) to
a ~250M one (hidden 1024, FFN 3072, 16/8 heads, 14 layers: width and depth at once, GQA groups 3 -> 2 heads)
with scores from `prune.importance` on a 4 x 128-token calibration batch, then times:
    importance   one scoring forward (compile excluded), reported on its own
    prune        the jitted `prune_params` with the selection fixed (compile excluded)
    baseline     a plain jitted copy of the target: a fresh target-sized tree made from the source
                 buffers by contiguous slices (the same bytes read and written, no index gathers)
and prints prune / baseline (goal: <= 1.5). As in bench_expand.py, it also reports prune / a jitted
copy of the finished target tree. Every time is the median of --reps runs after one warm-up call;
the three copies take turns in each round, so load changes on the shared machine hit them alike.
The JSON goes to --out and the printed lines to the same path with .log.
"""

from __future__ import annotations

import functools
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxgrow import config as config_lib, prune
from jaxgrow.model import layout

flags.DEFINE_string("out", "experiments/results/cpu/bench_prune.json", "JSON output (the log goes beside it)")
flags.DEFINE_integer("reps", 7, "timed repetitions (median reported)")
flags.DEFINE_float("scale", 1.0, "multiply the widths (smaller for a quick check)")
flags.DEFINE_integer("calib_batch", 4, "calibration sequences")
flags.DEFINE_integer("calib_len", 128, "tokens per calibration sequence")
FLAGS = flags.FLAGS


def configs(scale: float):
    w = lambda n: max(64, int(round(n * scale / 64)) * 64)  # noqa: E731
    src = config_lib.model_config(vocab_size=32000, hidden_size=w(1536), ffn_size=w(4096), num_layers=16,
                                  num_heads=24, num_kv_heads=8, head_dim=64)
    dst = config_lib.model_config(vocab_size=32000, hidden_size=w(1024), ffn_size=w(3072), num_layers=14,
                                  num_heads=16, num_kv_heads=8, head_dim=64)
    return src, dst


def timed(fns: dict, reps: int) -> dict[str, float]:
    """Median wall time of each function after one untimed call (which compiles). The functions
    take turns in every round, so a change in the machine's load hits them alike (it is shared)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            jax.block_until_ready(out)
            times[name].append(time.perf_counter() - t0)
            del out
    return {name: float(np.median(t)) for name, t in times.items()}


def random_params(cfg) -> dict:
    """Random float32 params in the layout, generated on device (init_params' RNG is not what we time)."""
    def leaf(spec, key):
        return jax.random.normal(key, spec.shape, jnp.float32) * (spec.std or 1.0)

    specs = layout.param_specs(cfg)
    make = jax.jit(lambda key: {s.path: leaf(s, k) for s, k in zip(specs, jax.random.split(key, len(specs)))})
    flat = make(jax.random.key(0))
    tree: dict = {}
    for spec in specs:
        layout.set_path(tree, spec.path, flat[spec.path])
    return tree


def slice_baseline(src_cfg, dst_cfg):
    """A fresh dst-shaped tree from the source buffers: each leaf's leading block, by static slices."""
    src_specs = layout.spec_by_path(src_cfg)

    def copy(tree):
        out: dict = {}
        for spec in layout.param_specs(dst_cfg):
            x = layout.get_path(tree, spec.path)
            assert x.shape == src_specs[spec.path].shape
            layout.set_path(out, spec.path, jax.lax.slice(x, (0,) * x.ndim, spec.shape))
        return out

    return jax.jit(copy)


def main(_):
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    src, dst = configs(FLAGS.scale)
    params = random_params(src)
    tokens = jax.random.randint(jax.random.key(1), (FLAGS.calib_batch, FLAGS.calib_len), 0, src.vocab_size)

    t0 = time.perf_counter()
    scores = prune.importance(params, src, tokens)
    t_importance_first = time.perf_counter() - t0
    t_importance = timed({"importance": lambda: prune.importance(params, src, tokens)}, FLAGS.reps)["importance"]
    t0 = time.perf_counter()
    sel = prune.selection(src, dst, scores=scores)
    t_selection = time.perf_counter() - t0

    pruner = jax.jit(functools.partial(prune.prune_params, src_cfg=src, dst_cfg=dst, keep=sel))
    baseline = slice_baseline(src, dst)
    target = pruner(params)
    copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
    t = timed({"prune": lambda: pruner(params), "slices": lambda: baseline(params), "copy": lambda: copy(target)},
              FLAGS.reps)
    t_prune, t_slice, t_copy = t["prune"], t["slices"], t["copy"]

    n_src, n_dst = layout.param_count(src), layout.param_count(dst)
    assert n_dst == sum(x.size for x in jax.tree.leaves(target))
    gb_moved = 4 * n_dst * 2 / 1e9  # read + write of the target's bytes
    say(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({platform.machine()}), jax {jax.__version__}")
    say(f"source {n_src / 1e6:.0f}M params (D={src.hidden_size} F={src.ffn_size} H={src.num_heads}/{src.num_kv_heads} "
        f"L={src.num_layers}) -> target {n_dst / 1e6:.0f}M (D={dst.hidden_size} F={dst.ffn_size} "
        f"H={dst.num_heads}/{dst.num_kv_heads} L={dst.num_layers}), {4 * n_dst / 2**30:.2f} GiB fp32")
    say(f"importance on {FLAGS.calib_batch}x{FLAGS.calib_len} tokens: {1e3 * t_importance:.0f} ms "
        f"(first call incl. compile {1e3 * t_importance_first:.0f} ms); selection {1e3 * t_selection:.1f} ms")
    say(f"prune {1e3 * t_prune:.0f} ms; plain copy of the target (slices of the source) {1e3 * t_slice:.0f} ms "
        f"({gb_moved / t_slice:.1f} GB/s read+write); jitted copy of the target tree {1e3 * t_copy:.0f} ms")
    say(f"ratio prune/plain copy: {t_prune / t_slice:.2f} (goal <= 1.5); prune/copy of target: {t_prune / t_copy:.2f}")

    result = {"device": jax.devices()[0].device_kind, "device_count": jax.device_count(), "jax": jax.__version__,
              "src": {k: src[k] for k in config_lib.SIZE_KEYS}, "dst": {k: dst[k] for k in config_lib.SIZE_KEYS},
              "src_params": n_src, "dst_params": n_dst, "calibration_tokens": [FLAGS.calib_batch, FLAGS.calib_len],
              "reps": FLAGS.reps, "importance_s": t_importance, "importance_first_call_s": t_importance_first,
              "selection_s": t_selection, "prune_s": t_prune, "plain_copy_slices_s": t_slice,
              "copy_of_target_s": t_copy, "ratio_prune_to_plain_copy": t_prune / t_slice,
              "ratio_prune_to_copy_of_target": t_prune / t_copy}
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {out} and {out.with_suffix('.log')}")
    out.with_suffix(".log").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
