"""Expansion bandwidth, measured in one process.

    python experiments/bench_expand.py [--method zero] [--depth identity] [--reps 3]

Grows a ~270M-parameter Llama-style model into a ~500M one with a jitted `expand_params` (compile
excluded) and divides its wall time by that of a plain jitted copy of the ~500M target pytree on
the same devices. A ratio near 1 means expansion costs about one pass over the target's memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from absl import app, flags

import common
from jaxgrow import config as config_lib
from jaxgrow import expand
from jaxgrow.model import decoder

flags.DEFINE_string("method", "zero", "expansion method")
flags.DEFINE_string("depth", "identity", "depth strategy")
flags.DEFINE_integer("reps", 3, "timed repetitions (median reported)")
flags.DEFINE_float("scale", 1.0, "multiply the widths (smaller for a quick check)")
FLAGS = flags.FLAGS


def configs(scale: float):
    w = lambda n: int(round(n * scale / 64)) * 64  # noqa: E731
    src = config_lib.model_config(vocab_size=32000, hidden_size=w(1024), ffn_size=w(2816), num_layers=16, num_heads=16,
                              num_kv_heads=8, head_dim=64)
    dst = config_lib.model_config(vocab_size=32000, hidden_size=w(1536), ffn_size=w(4096), num_layers=16, num_heads=24,
                              num_kv_heads=8, head_dim=64)
    if FLAGS.method == "tile":
        dst = config_lib.model_config(**{**dst.to_dict(), "hidden_size": 2 * src.hidden_size, "ffn_size": 2 * src.ffn_size,
                                     "num_heads": 2 * src.num_heads, "num_kv_heads": 2 * src.num_kv_heads,
                                     "num_layers": src.num_layers})
    return src, dst


def main(_):
    src, dst = configs(FLAGS.scale)
    params = decoder.init_params(src, jax.random.key(0))
    jax.block_until_ready(params)
    grow = jax.jit(functools.partial(expand.expand_params, src_cfg=src, dst_cfg=dst, method=FLAGS.method,
                                     depth=FLAGS.depth))
    key = jax.random.key(1)
    t_expand = common.median_seconds(lambda: grow(params, key=key), FLAGS.reps, warmup=1)
    target = grow(params, key=key)
    copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
    t_copy = common.median_seconds(lambda: copy(target), FLAGS.reps, warmup=1)
    n_src = sum(x.size for x in jax.tree.leaves(params))
    n_dst = sum(x.size for x in jax.tree.leaves(target))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; method {FLAGS.method}, depth {FLAGS.depth}")
    print(f"source {n_src / 1e6:.0f}M params -> target {n_dst / 1e6:.0f}M params ({4 * n_dst / 2**30:.2f} GiB fp32)")
    print(f"expand {1e3 * t_expand:.0f} ms; plain copy of the target {1e3 * t_copy:.0f} ms "
          f"({4 * n_dst * 2 / t_copy / 1e9:.1f} GB/s read+write)")
    print(f"ratio expand/copy: {t_expand / t_copy:.2f}")


if __name__ == "__main__":
    app.run(main)
