"""Streamed safetensors export: same bytes as the in-memory conversion, bf16 option, never more than
about one layer in host memory, one-line error for a target that is not writable."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO, run_cli
from jaxgrow import config as config_lib
from jaxgrow.interop import export, hf
from jaxgrow.model import decoder, sharding


def small_model():
    return config_lib.model_config(vocab_size=512, hidden_size=64, ffn_size=160, num_layers=3, num_heads=4,
                               num_kv_heads=2, head_dim=16, tie_embeddings=False)


def read_all(out_dir):
    tensors = {}
    for path in sorted(out_dir.glob("model*.safetensors")):
        tensors.update(hf.read_safetensors(path))
    return tensors


def test_streamed_matches_in_memory_conversion_and_bf16(tmp_path, devices8):
    m = small_model()
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2, "dcn_data": 1}), devices8)
    params = jax.jit(lambda k: decoder.init_params(m, k), out_shardings=sharding.param_shardings(m, mesh))(jax.random.key(1))
    expected = hf.to_hf_tensors(jax.device_get(params), m)

    files = export.write_streamed(params, m, tmp_path / "f32", max_shard_bytes=40_000)
    assert len(files) > 3 and all(f.exists() for f in files)
    index = json.loads((tmp_path / "f32" / export.INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(expected)
    got = {}
    for f in files:
        got.update(load_file(str(f)))  # the reference reader accepts our headers
    assert list(got) and set(got) == set(expected)
    for name, x in expected.items():
        assert got[name].dtype == np.float32 and np.array_equal(got[name], x), name

    export.write_streamed(params, m, tmp_path / "bf16", dtype="bfloat16")
    bf = read_all(tmp_path / "bf16")
    assert (tmp_path / "bf16" / export.SINGLE_FILE).exists()
    import ml_dtypes  # noqa: PLC0415

    for name, x in expected.items():
        assert np.array_equal(bf[name], x.astype(ml_dtypes.bfloat16).astype(np.float32)), name


RSS_SCRIPT = textwrap.dedent(r'''
    import json, sys
    import jax, jax.numpy as jnp, ml_collections
    from jaxgrow import config
    from jaxgrow.interop import export, hf
    from jaxgrow.model import layout, sharding

    m = config.model_config(vocab_size=4096, hidden_size=1024, ffn_size=4096, num_layers=10, num_heads=8,
                            num_kv_heads=8, head_dim=128, tie_embeddings=True)
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 8, "tensor": 1, "dcn_data": 1}))
    shapes = layout.build_tree(m, lambda s: s.shape)
    import math
    fill = lambda shape: (jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape) % 7.0) - 3.0
    params = jax.jit(lambda: jax.tree.map(fill, shapes, is_leaf=lambda x: isinstance(x, tuple)),
                     out_shardings=sharding.param_shardings(m, mesh))()
    jax.block_until_ready(params)

    def status(key):
        return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

    def peak_increase(fn):
        base = status("VmRSS:")
        open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM (peak RSS) to the current RSS
        fn()
        return status("VmHWM:") - base

    layer = sum(4 * s.size for s in [jax.ShapeDtypeStruct(sp.shape[1:], jnp.float32)
                                     for sp in layout.param_specs(m) if sp.stacked])
    total = sum(4 * x.size for x in jax.tree.leaves(params))
    out = sys.argv[1]
    streamed = peak_increase(lambda: export.write_streamed(params, m, out + "/streamed", max_shard_bytes=200 << 20))
    gathered = peak_increase(lambda: hf.write_safetensors(hf.to_hf_tensors(jax.device_get(params), m),
                                                          __import__("pathlib").Path(out)))
    print(json.dumps({"layer": layer, "total": total, "streamed": streamed, "gathered": gathered}))
''')


@pytest.mark.slow
def test_streamed_export_peak_rss_stays_within_two_layers(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["total"] >= 8 * r["layer"]
    assert r["streamed"] <= 2 * r["layer"] + 300 * 2**20, r
    assert r["gathered"] >= r["total"], r  # the measurement sees a whole-model gather
    assert len(list((tmp_path / "streamed").glob("model-*.safetensors"))) >= 3


def test_export_to_unwritable_target_is_a_one_line_error(tmp_path, tiny_family):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run_cli("export", "--workdir", str(tiny_family), "--all", "--out", str(blocker / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("jaxgrow: error")]
    assert len(lines) == 1 and "not writable" in lines[0] and "--out" in lines[0]
    assert blocker.read_text() == "not a directory"
