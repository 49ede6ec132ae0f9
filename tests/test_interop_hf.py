"""Hugging Face interchange without torch: safetensors files, sharding, re-export, the config
mapping's refusals. (Parity with transformers itself: test_interop_hf_parity.py.)"""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import run_cli
from hf_common import TEXT, VOCAB, assert_params_equal, our_config, random_params
from jaxgrow import config as config_lib
from jaxgrow.data import tokenizers as tokenizers_lib
from jaxgrow.interop import hf
from jaxgrow.model import layout


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizers_lib.train_bpe([TEXT] * 4, VOCAB)


def our_llama(tmp_path: Path) -> Path:
    """A GQA Llama checkpoint written by our exporter (the same names and shapes transformers writes)."""
    cfg = config_lib.model_config(vocab_size=VOCAB, hidden_size=64, ffn_size=96, num_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=16, norm_eps=1e-5, init_std=0.2)
    return hf.save_pretrained(random_params(cfg), cfg, tmp_path / "llama")


def test_sharded_export_round_trips(tokenizer, tmp_path):
    cfg = our_config("gqa_tied")
    params = random_params(cfg, seed=3)
    out = hf.save_pretrained(params, cfg, tmp_path / "sharded", tokenizer=tokenizer, max_shard_bytes=20_000)
    index = json.loads((out / hf.INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in out.glob("model*.safetensors")) == files
    assert index["metadata"]["total_parameters"] == layout.param_count(cfg)
    loaded, loaded_cfg = hf.load_params(out)
    assert_params_equal(loaded, params)
    assert all(loaded_cfg[k] == cfg[k] for k in config_lib.SIZE_KEYS + ("tie_embeddings", "rope_theta", "norm_eps"))

    # Re-exporting unsharded into the same directory removes the stale shards and index.
    hf.save_pretrained(params, cfg, out, tokenizer=tokenizer)
    assert [p.name for p in out.glob("model*.safetensors")] == ["model.safetensors"]
    assert not (out / hf.INDEX_FILE).exists()
    assert_params_equal(hf.load_params(out)[0], params)


def test_weight_mapping_is_exact_both_ways():
    for name in ("mha_untied", "gqa_tied", "mqa_untied"):
        cfg = our_config(name)
        params = random_params(cfg, seed=7)
        tensors = hf.to_hf_tensors(params, cfg)
        q = tensors["model.layers.0.self_attn.q_proj.weight"]  # [H*d, D] = q[0].reshape(D, H*d).T
        np.testing.assert_array_equal(q, np.asarray(params["layers"]["attn"]["q_proj"][0]).reshape(cfg.hidden_size, -1).T)
        assert ("lm_head.weight" in tensors) == (not cfg.tie_embeddings)
        assert_params_equal(hf.from_hf_tensors(tensors, cfg), params)


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "only LlamaForCausalLM"),
    ({"attention_bias": True}, "biases are not supported"),
    ({"mlp_bias": True}, "biases are not supported"),
    ({"hidden_act": "gelu"}, "only silu"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_parameters"),
    ({"num_attention_heads": 5}, "num_heads=5 must be divisible"),
])
def test_import_refuses_unsupported_configs(change, message, tmp_path):
    src = our_llama(tmp_path)
    hf_cfg = json.loads((src / "config.json").read_text())
    hf_cfg.update(change)
    (src / "config.json").write_text(json.dumps(hf_cfg))
    with pytest.raises(config_lib.InputError, match=message) as err:
        hf.load_params(src)
    assert "config.json" in str(err.value) and "\n" not in str(err.value)


def test_import_refuses_bad_weights(tmp_path):
    src = our_llama(tmp_path)
    tensors = load_file(str(src / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj"
    save_file({**tensors, f"{name}.bias": np.zeros(64, np.float32)}, str(src / "model.safetensors"))
    with pytest.raises(config_lib.InputError, match="bias"):
        hf.load_params(src)
    save_file({k: v for k, v in tensors.items() if k != "model.norm.weight"}, str(src / "model.safetensors"))
    with pytest.raises(config_lib.InputError, match="model.norm.weight is missing"):
        hf.load_params(src)
    save_file({**tensors, f"{name}.weight": tensors[f"{name}.weight"][:8]}, str(src / "model.safetensors"))
    with pytest.raises(config_lib.InputError, match=f"{name}.weight has shape"):
        hf.load_params(src)
    (src / "model.safetensors").unlink()
    with pytest.raises(config_lib.InputError, match="no model.safetensors"):
        hf.load_params(src)


def test_import_without_config_json_exits_2(tmp_path):
    empty = tmp_path / "not_hf"
    empty.mkdir()
    proc = run_cli("import", "--hf", str(empty), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxgrow: error:") and "config.json" in lines[0], proc.stderr
    assert not (tmp_path / "w").exists()
