"""Peak host memory of a streamed export vs the whole-model gather, measured in one process.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/bench_export.py OUT_DIR

A 10-layer model (hidden 1024, ffn 4096: 64 MiB per layer in fp32, ~660 MiB in all) is created
sharded over 8 host devices; each export's peak RSS increase is read from VmHWM after resetting it
(/proc/self/clear_refs). Prints JSON with both peaks and their ratio.
"""

import argparse
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections

import common
from jaxgrow import config as config_lib
from jaxgrow.interop import export
from jaxgrow.interop import hf
from jaxgrow.interop import safetensors_files
from jaxgrow.model import layout
from jaxgrow.model import sharding


def peak_increase(fn):
    base = common.proc_status_bytes("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := current RSS
    t0 = time.perf_counter()
    fn()
    return common.proc_status_bytes("VmHWM:") - base, time.perf_counter() - t0


def main(out):
    m = config_lib.model_config(vocab_size=4096, hidden_size=1024, ffn_size=4096, num_layers=10, num_heads=8,
                            num_kv_heads=8, head_dim=128, tie_embeddings=True)
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 8, "tensor": 1, "dcn_data": 1}))
    shapes = layout.build_tree(m, lambda s: s.shape)
    fill = lambda shape: (jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape) % 7.0) - 3.0  # noqa: E731
    params = jax.jit(lambda: jax.tree.map(fill, shapes, is_leaf=lambda x: isinstance(x, tuple)),
                     out_shardings=sharding.param_shardings(m, mesh))()
    jax.block_until_ready(params)
    layer = sum(4 * math.prod(sp.shape[1:]) for sp in layout.param_specs(m) if sp.stacked)
    total = sum(4 * x.size for x in jax.tree.leaves(params))
    streamed, t_s = peak_increase(lambda: export.write_streamed(params, m, out + "/streamed", max_shard_bytes=200 << 20))
    bf16, t_b = peak_increase(lambda: export.write_streamed(params, m, out + "/bf16", dtype="bfloat16"))
    gathered, t_g = peak_increase(lambda: safetensors_files.write_safetensors(
        hf.to_hf_tensors(jax.device_get(params), m), pathlib.Path(out)))
    return {"layer_bytes": layer, "model_bytes": total, "streamed_peak_increase": streamed, "streamed_s": t_s,
            "bf16_streamed_peak_increase": bf16, "bf16_s": t_b, "gathered_peak_increase": gathered,
            "gathered_s": t_g, "gathered_over_streamed": gathered / max(streamed, 1),
            "streamed_over_layer": streamed / layer}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", metavar="OUT_DIR", help="directory the three exports are written under")
    print(json.dumps(main(parser.parse_args().out), indent=1))
