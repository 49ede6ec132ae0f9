"""Hugging Face interchange: export/import parity with transformers, sharding, sampling, bad input.

Everything runs on CPU in float32. Parity is checked on logits within 1e-4 with weights drawn at a
large std (init_std=0.2, norm gains perturbed) so the logits are far from trivial.
"""

import json
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import run_cli
from safetensors.numpy import load_file, save_file

from jaxgrow import checkpoint, config, data, family, hf, inference, layout, model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4
VOCAB = 320
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. Call me Ishmael. Some years ago - never mind how long precisely - "
        "having little or no money in my purse, I thought I would sail about a little and see the watery "
        "part of the world. Whan that Aprille with his shoures soote. To be, or not to be: that is the question.")
ROUND_TRIP_TEXTS = ["To be, or not to be: that is the question.", "  leading spaces,\ttabs\nand newlines\n\n",
                    "naïve café — “quotes” ✓ 日本語 🙂", "<|endoftext|>between<|endoftext|>"]

# MHA untied; GQA tied (different theta/eps); MQA untied with H*d != D (head_dim independent of D).
CONFIGS = {
    "mha_untied": {"hidden_size": 64, "ffn_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4,
                   "head_dim": 16},
    "gqa_tied": {"hidden_size": 48, "ffn_size": 96, "num_layers": 3, "num_heads": 6, "num_kv_heads": 2,
                 "head_dim": 8, "tie_embeddings": True, "rope_theta": 500000.0, "norm_eps": 1e-6},
    "mqa_untied": {"hidden_size": 64, "ffn_size": 160, "num_layers": 2, "num_heads": 4, "num_kv_heads": 1,
                   "head_dim": 32},
}


@pytest.fixture(scope="module")
def tokenizer():
    return data.train_tokenizer([TEXT] * 4, VOCAB)


def random_params(model_cfg, seed: int = 0) -> dict:
    """Init at the config's (large) std, plus norm gains away from 1 so their mapping is tested."""
    params = model.init_params(model_cfg, jax.random.key(seed))
    keys = iter(jax.random.split(jax.random.key(seed + 1), 8))
    for path in (("layers", "attn_norm", "scale"), ("layers", "mlp_norm", "scale"), ("final_norm", "scale")):
        x = layout.get_path(params, path)
        layout.set_path(params, path, x + 0.3 * jax.random.normal(next(keys), x.shape))
    return jax.device_get(params)


def random_tokens(vocab: int, shape=(2, 24), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def hf_logits(hf_model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


_jit_logits = jax.jit(model.logits, static_argnums=1)


def hf_greedy(hf_model, prompt: list[int], n_new: int) -> list[int]:
    """transformers' greedy continuation, without stopping at EOS."""
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                do_sample=False, max_new_tokens=n_new, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def our_logits(params, model_cfg, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(_jit_logits(params, ml_collections.FrozenConfigDict(model_cfg), jnp.asarray(tokens)))


def load_hf(path: Path):
    m = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return m.eval()


def assert_params_equal(a: dict, b: dict) -> None:
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def hf_random_llama(tmp_path: Path, tie: bool, dtype=None, seed: int = 0) -> tuple[Path, object]:
    """A transformers-built Llama (GQA) with std-0.2 weights, saved as safetensors."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                                   tie_word_embeddings=tie, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.2)
    if dtype is not None:
        m = m.to(dtype)
    out = tmp_path / f"hf_llama_{'tied' if tie else 'untied'}"
    m.save_pretrained(str(out))
    return out, m


# ----------------------------------------------------------------------------------------------
# Export


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_matches_transformers(name, tokenizer, tmp_path):
    cfg = config.model_config(vocab_size=VOCAB, init_std=0.2, **CONFIGS[name])
    params = random_params(cfg)
    out = hf.save_pretrained(params, cfg, tmp_path / name, tokenizer=tokenizer)

    hf_cfg = json.loads((out / "config.json").read_text())
    eos = tokenizer.token_to_id(data.EOS)
    assert hf_cfg["architectures"] == ["LlamaForCausalLM"] and hf_cfg["torch_dtype"] == "float32"
    assert (hf_cfg["num_key_value_heads"], hf_cfg["head_dim"], hf_cfg["tie_word_embeddings"]) == (
        cfg.num_kv_heads, cfg.head_dim, cfg.tie_embeddings)
    assert hf_cfg["bos_token_id"] == hf_cfg["eos_token_id"] == eos
    assert (out / "model.safetensors").exists() and not (out / hf.INDEX_FILE).exists()

    hf_model = load_hf(out)
    assert hf_model.config.eos_token_id == eos
    tokens = random_tokens(VOCAB)
    ours, theirs = our_logits(params, cfg, tokens), hf_logits(hf_model, tokens)
    assert np.abs(ours).max() > 1.0  # non-trivial logits, so the tolerance means something
    np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0)
    prompt = tokens[0, :5].tolist()  # greedy decoding agrees token for token (HF decodes with a KV cache)
    assert hf.generate(params, cfg, prompt, 12) == hf_greedy(hf_model, prompt, 12)

    auto_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert auto_tok.eos_token == data.EOS and auto_tok.eos_token_id == eos
    for text in ROUND_TRIP_TEXTS:
        ids = auto_tok(text)["input_ids"]
        assert ids == tokenizer.encode(text).ids
        assert auto_tok.decode(ids) == text


def test_sharded_export_loads_and_round_trips(tokenizer, tmp_path):
    cfg = config.model_config(vocab_size=VOCAB, init_std=0.2, **CONFIGS["gqa_tied"])
    params = random_params(cfg, seed=3)
    out = hf.save_pretrained(params, cfg, tmp_path / "sharded", tokenizer=tokenizer, max_shard_bytes=20_000)
    index = json.loads((out / hf.INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in out.glob("model*.safetensors")) == files

    tokens = random_tokens(VOCAB, seed=1)
    np.testing.assert_allclose(hf_logits(load_hf(out), tokens), our_logits(params, cfg, tokens), atol=ATOL, rtol=0)
    loaded, loaded_cfg = hf.load_params(out)
    assert_params_equal(loaded, params)
    assert all(loaded_cfg[k] == cfg[k] for k in config.SIZE_KEYS + ("tie_embeddings", "rope_theta", "norm_eps"))

    # Re-exporting unsharded into the same directory removes the stale shards and index.
    hf.save_pretrained(params, cfg, out, tokenizer=tokenizer)
    assert [p.name for p in out.glob("model*.safetensors")] == ["model.safetensors"]
    assert not (out / hf.INDEX_FILE).exists()
    assert_params_equal(hf.load_params(out)[0], params)


# ----------------------------------------------------------------------------------------------
# Import


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_import_transformers_model(tie, tmp_path):
    src, hf_model = hf_random_llama(tmp_path, tie)
    params, cfg = hf.load_params(src)
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.tie_embeddings, cfg.norm_eps) == (2, 16, tie, 1e-5)
    tokens = random_tokens(VOCAB, seed=2)
    theirs = hf_logits(hf_model, tokens)
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(our_logits(params, cfg, tokens), theirs, atol=ATOL, rtol=0)

    # import -> export -> import is the identity (exact).
    again, again_cfg = hf.load_params(hf.save_pretrained(params, cfg, tmp_path / "re_export"))
    assert_params_equal(again, params)
    assert again_cfg.to_dict() == cfg.to_dict()


def test_import_bfloat16_checkpoint(tmp_path):
    src, hf_model = hf_random_llama(tmp_path, tie=False, dtype=torch.bfloat16)
    params, _ = hf.load_params(src)
    expected = hf.from_hf_tensors({k: v.float().numpy() for k, v in hf_model.state_dict().items()},
                                  hf.model_config_from_hf(json.loads((src / "config.json").read_text())))
    assert_params_equal(params, expected)


def _restore(directory: Path, model_cfg) -> dict:
    """Params of the newest checkpoint in `directory`, on one device."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = layout.build_tree(model_cfg, lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32, sharding=device))
    ckpts = checkpoint.Checkpoints(directory)
    params, _, _ = ckpts.restore(ckpts.latest_step(), abstract, None)
    ckpts.close()
    return jax.device_get(params)


def test_import_to_workdir_then_expand(tokenizer, tmp_path):
    src, hf_model = hf_random_llama(tmp_path, tie=False)
    tokenizer.save(str(src / "tokenizer.json"))
    work = tmp_path / "imported"
    member_dir = hf.import_to_workdir(src, work)
    assert member_dir == family.member_dir(work, hf.IMPORTED_MEMBER)
    assert (work / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()

    cfg, stages = family.load_setup_for_eval(work)
    assert [s.name for s in stages] == [hf.IMPORTED_MEMBER]
    ckpts = checkpoint.Checkpoints(member_dir)
    meta = ckpts.read_meta(ckpts.latest_step())
    ckpts.close()
    assert (meta["member"], meta["stage"], meta["data_state"]) == (hf.IMPORTED_MEMBER, 0, None)
    assert meta["model"] == cfg.model.to_dict()
    params = _restore(member_dir, stages[0].model)
    assert_params_equal(params, hf.load_params(src)[0])
    with pytest.raises(config.InputError, match="already holds a run"):
        hf.import_to_workdir(src, work)

    # The imported member grows like any other: expand into a wider, deeper first member.
    big = tmp_path / "big.py"
    m = stages[0].model
    big.write_text(textwrap.dedent(f"""
        from jaxgrow.config import add_member, base_config, model_config

        def get_config():
            c = base_config()
            c.model = model_config(vocab_size={m.vocab_size}, head_dim={m.head_dim}, norm_eps={m.norm_eps},
                                   rope_theta={m.rope_theta})
            add_member(c, "big", hidden_size=96, ffn_size=192, num_layers=3, num_heads=6, num_kv_heads=3)
            return c
    """))
    work2 = tmp_path / "grown"
    run_cli("expand", "--config", str(big), "--from", str(member_dir), "--workdir", str(work2), check=True)
    big_cfg = config.members(ml_collections.ConfigDict(json.loads((work2 / "config.json").read_text())))[0].model
    grown = _restore(work2 / "stages" / "0-big", big_cfg)
    tokens = random_tokens(VOCAB, seed=4)
    np.testing.assert_allclose(our_logits(grown, big_cfg, tokens), hf_logits(hf_model, tokens), atol=ATOL, rtol=0)


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
    src, _ = hf_random_llama(tmp_path, tie=False)
    hf_cfg = json.loads((src / "config.json").read_text())
    hf_cfg.update(change)
    (src / "config.json").write_text(json.dumps(hf_cfg))
    with pytest.raises(config.InputError, match=message) as err:
        hf.load_params(src)
    assert "config.json" in str(err.value) and "\n" not in str(err.value)


def test_import_refuses_bad_weights(tmp_path):
    src, _ = hf_random_llama(tmp_path, tie=False)
    tensors = load_file(str(src / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj"
    save_file({**tensors, f"{name}.bias": np.zeros(64, np.float32)}, str(src / "model.safetensors"))
    with pytest.raises(config.InputError, match="bias"):
        hf.load_params(src)
    save_file({k: v for k, v in tensors.items() if k != "model.norm.weight"}, str(src / "model.safetensors"))
    with pytest.raises(config.InputError, match="model.norm.weight is missing"):
        hf.load_params(src)
    save_file({**tensors, f"{name}.weight": tensors[f"{name}.weight"][:8]}, str(src / "model.safetensors"))
    with pytest.raises(config.InputError, match=f"{name}.weight has shape"):
        hf.load_params(src)
    (src / "model.safetensors").unlink()
    with pytest.raises(config.InputError, match="no model.safetensors"):
        hf.load_params(src)


def test_import_without_config_json_exits_2(tmp_path):
    empty = tmp_path / "not_hf"
    empty.mkdir()
    proc = run_cli("import", "--hf", str(empty), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxgrow: error:") and "config.json" in lines[0], proc.stderr
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------------------------
# Sampling


def test_generate_is_one_compilation_and_samples_sensibly():
    cfg = config.model_config(vocab_size=64, init_std=0.2, **CONFIGS["mqa_untied"])
    params = jax.device_put(random_params(cfg))
    prompt = [1, 2, 3]
    greedy = hf.generate(params, cfg, prompt, 12)
    before = inference._decode._cache_size()  # hf.generate decodes with jaxgrow.inference
    assert hf.generate(params, cfg, prompt + [4, 5], 12) is not None  # same buffer bucket: no recompile
    assert inference._decode._cache_size() == before

    def next_logits(seq):  # reference: the forward over a zero-padded row (one shape, one compilation)
        row = np.zeros((1, 32), np.int32)
        row[0, :len(seq)] = seq
        return our_logits(params, cfg, row)[0, len(seq) - 1]

    np.testing.assert_allclose(next_logits(prompt), our_logits(params, cfg, np.asarray([prompt]))[0, -1], atol=1e-5)
    seq = list(prompt)  # greedy = argmax of the full forward at every step
    for _ in range(12):
        seq.append(int(np.argmax(next_logits(seq))))
    assert greedy == seq[len(prompt):]
    assert hf.generate(params, cfg, prompt, 12, temperature=1.0, top_k=1, seed=5) == greedy

    a = hf.generate(params, cfg, prompt, 30, temperature=1.0, seed=1)
    assert a == hf.generate(params, cfg, prompt, 30, temperature=1.0, seed=1)
    assert a != hf.generate(params, cfg, prompt, 30, temperature=1.0, seed=2)
    top3 = hf.generate(params, cfg, prompt, 10, temperature=5.0, top_k=3, seed=0)
    seq = list(prompt)
    for t in top3:  # every sampled token is among the 3 most likely at its step
        assert t in np.argsort(next_logits(seq))[-3:]
        seq.append(t)

    stop = greedy[4]  # stops right after emitting eos_id
    assert hf.generate(params, cfg, prompt, 12, eos_id=stop) == greedy[:greedy.index(stop) + 1]
    assert hf.generate(params, cfg, prompt, 0) == []
    with pytest.raises(config.InputError, match="temperature"):
        hf.generate(params, cfg, prompt, 4, temperature=-1.0)


# ----------------------------------------------------------------------------------------------
# The tiny family, end to end through the CLI


def _parse_samples(stdout: str, prompt: str) -> dict[str, str]:
    """`sample --all` prints '=== name ===\\n{prompt}{text}\\n' per member."""
    out = {}
    for block in stdout.split("=== ")[1:]:
        name, body = block.split(" ===\n", 1)
        assert body.startswith(prompt)
        out[name] = body[len(prompt):].removesuffix("\n\n")
    return out


@pytest.mark.slow
def test_family_export_all_and_greedy_sample_match_transformers(tiny_family, tmp_path):
    out = tmp_path / "hf"
    proc = run_cli("export", "--workdir", str(tiny_family), "--all", "--out", str(out), check=True)
    cfg, stages = family.load_setup_for_eval(tiny_family)
    names = [s.name for s in stages]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert proc.stdout.count("jaxgrow: exported") == len(names)

    prompt, n_new = "ROMEO:\nWhat light", 20
    samples = _parse_samples(run_cli("sample", "--workdir", str(tiny_family), "--all", "--prompt", prompt,
                                     "--max_new_tokens", str(n_new), check=True).stdout, prompt)
    assert list(samples) == names
    tok = transformers.AutoTokenizer.from_pretrained(str(out / names[0]))
    eos = tok.eos_token_id
    prompt_ids = tok(prompt)["input_ids"]
    tokens = random_tokens(cfg.model.vocab_size, shape=(2, 32), seed=5)
    for stage in stages:
        hf_model = load_hf(out / stage.name)
        params = jax.device_get(family.member_params(tiny_family, stage))
        np.testing.assert_allclose(hf_logits(hf_model, tokens), our_logits(params, stage.model, tokens),
                                   atol=ATOL, rtol=0)
        hf_new = hf_greedy(hf_model, prompt_ids, n_new)
        assert len(hf_new) == n_new
        assert hf.generate(params, stage.model, prompt_ids, n_new) == hf_new, stage.name
        until_eos = hf_new[:hf_new.index(eos)] if eos in hf_new else hf_new
        assert prompt + samples[stage.name] == tok.decode(prompt_ids + until_eos), stage.name


def test_workdir_commands_refuse_bad_members(tmp_path):
    work = tmp_path / "w"
    with pytest.raises(config.InputError, match="no config.json"):
        hf.export_workdir(work, tmp_path / "out", None)
    cfg = config.base_config()
    config.add_member(cfg, "only", hidden_size=64)
    work.mkdir()
    family.write_config(cfg, work)
    with pytest.raises(config.InputError, match="--member=nope is not a member"):
        hf.export_workdir(work, tmp_path / "out", "nope")
    with pytest.raises(config.InputError, match="holds no finished member"):
        hf.sample_workdir(work, None, "hi", 4, 0.0, 0, 0)
    with pytest.raises(config.InputError, match="top_k"):
        hf.sample_workdir(work, "only", "hi", 4, 0.0, -1, 0)
