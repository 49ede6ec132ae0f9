"""Hugging Face parity: our exports load in transformers with the same logits (1e-4) and greedy
tokens; transformers-built checkpoints import exactly; the tiny family end to end through the CLI.

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
from hf_common import (CONFIGS, ROUND_TRIP_TEXTS, TEXT, VOCAB, assert_params_equal, our_config, our_logits,
                       random_params, random_tokens)
from jaxgrow import config as config_lib
from jaxgrow.family import hf_runs as commands
from jaxgrow.data import tokenizers as tokenizers_lib
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.interop import hf
from jaxgrow.model import layout
from jaxgrow.serve import decode
from jaxgrow.train import checkpoint


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizers_lib.train_bpe([TEXT] * 4, VOCAB)


def hf_logits(hf_model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


def hf_greedy(hf_model, prompt: list[int], n_new: int) -> list[int]:
    """transformers' greedy continuation, without stopping at EOS."""
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                do_sample=False, max_new_tokens=n_new, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def load_hf(path: Path):
    m = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return m.eval()


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
    cfg = our_config(name)
    params = random_params(cfg)
    out = hf.save_pretrained(params, cfg, tmp_path / name, tokenizer=tokenizer)

    hf_cfg = json.loads((out / "config.json").read_text())
    eos = tokenizer.token_to_id(tokenizers_lib.DEFAULT_EOS)
    assert hf_cfg["architectures"] == ["LlamaForCausalLM"] and hf_cfg["torch_dtype"] == "float32"
    assert (hf_cfg["num_key_value_heads"], hf_cfg["head_dim"], hf_cfg["tie_word_embeddings"]) == (
        cfg.num_kv_heads, cfg.head_dim, cfg.tie_embeddings)
    assert (hf_cfg["eos_token_id"], hf_cfg["bos_token_id"]) == (eos, None)  # the pipeline's EOS; no BOS by default
    assert (out / "model.safetensors").exists() and not (out / hf.INDEX_FILE).exists()

    hf_model = load_hf(out)
    assert hf_model.config.eos_token_id == eos
    tokens = random_tokens(VOCAB)
    ours, theirs = our_logits(params, cfg, tokens), hf_logits(hf_model, tokens)
    assert np.abs(ours).max() > 1.0  # non-trivial logits, so the tolerance means something
    np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0)
    prompt = tokens[0, :5].tolist()  # greedy decoding agrees token for token (HF decodes with a KV cache)
    assert decode.generate(params, cfg, prompt, 12) == hf_greedy(hf_model, prompt, 12)

    auto_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert auto_tok.eos_token == tokenizers_lib.DEFAULT_EOS and auto_tok.eos_token_id == eos
    for text in ROUND_TRIP_TEXTS:
        ids = auto_tok(text)["input_ids"]
        assert ids == tokenizer.encode(text).ids
        assert auto_tok.decode(ids) == text


def _stopping_params(cfg, tok, chain: list[str]) -> dict:
    """Random params whose greedy continuation walks `chain` (token strings) from chain[0], one per step.
    The blocks' residual writers are ~0, so the last hidden state is the current token's embedding, and
    the (untied) LM head column of chain[i + 1] is chain[i]'s embedding direction: its logit is ~30,
    every other one below ~16."""
    params = random_params(cfg, seed=4)
    for path in (("layers", "attn", "o_proj"), ("layers", "mlp", "down_proj")):
        layout.set_path(params, path, np.asarray(layout.get_path(params, path)) * 1e-4)
    params["final_norm"]["scale"] = np.ones_like(params["final_norm"]["scale"])
    embedding = np.asarray(params["embed"]["embedding"])
    head = 0.02 * np.random.default_rng(0).standard_normal(embedding.T.shape).astype(np.float32)
    ids = [tok.token_to_id(t) for t in chain]
    assert None not in ids and len(set(ids)) == len(ids), chain
    for prev, nxt in zip(ids, ids[1:]):
        head[:, nxt] = 4.0 * embedding[prev] / np.linalg.norm(embedding[prev])
    params["lm_head"]["kernel"] = head
    return params


@pytest.mark.parametrize("source", ["tokenizer.json", "tokenizer.model"])
def test_export_carries_the_runs_eos_and_bos_and_generate_stops_there(source, mistral_tokenizer, tmp_path):
    """Mistral-7B's published tokenizer (EOS </s> = 2, BOS <s> = 1), as the fixture's transformers-converted
    tokenizer.json and as jaxgrow's own conversion of the SentencePiece file: the exported config,
    generation config and tokenizer files carry the run's data.eos_token / data.bos_token, and greedy
    `generate` in transformers stops at </s>, token for token where ours does."""
    if source == "tokenizer.json":
        tok = tokenizers_lib.read_tokenizer(str(mistral_tokenizer))
    else:
        mc = pytest.importorskip("mistral_common")
        tok = tokenizers_lib.read_tokenizer(str(Path(mc.__file__).parent / "data" / "tokenizer.model.v1"))
    cfg = config_lib.model_config(vocab_size=32000, hidden_size=64, ffn_size=128, num_layers=2, num_heads=4,
                                  num_kv_heads=2, head_dim=16, tie_embeddings=False, init_std=0.2)
    params = _stopping_params(cfg, tok, ["▁brown", "▁f", "ox", "▁j", "umps", "</s>"])
    out = hf.save_pretrained(params, cfg, tmp_path / "mistral", tokenizer=tok, max_position_embeddings=128,
                             eos_token="</s>", bos_token="<s>")

    read = lambda name: json.loads((out / name).read_text())  # noqa: E731
    assert {k: read("config.json")[k] for k in ("bos_token_id", "eos_token_id", "max_position_embeddings")} == {
        "bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 128}
    assert read("generation_config.json") == {"bos_token_id": 1, "eos_token_id": 2}
    tok_cfg = read("tokenizer_config.json")
    assert (tok_cfg["eos_token"], tok_cfg["bos_token"], tok_cfg["add_bos_token"], tok_cfg["model_max_length"]) == (
        "</s>", "<s>", True, 128)
    assert read("special_tokens_map.json") == {"bos_token": "<s>", "eos_token": "</s>"}

    hf_model = load_hf(out)
    auto_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert (auto_tok.eos_token, auto_tok.eos_token_id, auto_tok.bos_token, auto_tok.bos_token_id) == ("</s>", 2, "<s>", 1)
    assert hf_model.generation_config.eos_token_id == 2 and auto_tok.model_max_length == 128
    prompt = auto_tok("The quick brown")["input_ids"]
    assert prompt == [1] + tok.encode("The quick brown", add_special_tokens=False).ids  # BOS first, as the run's documents

    with torch.no_grad():  # the generation config's EOS stops it
        full = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 do_sample=False, max_new_tokens=50, pad_token_id=2)[0].tolist()
    new = full[len(prompt):]
    assert new[-1] == 2 and len(full) < len(prompt) + 50 and new.count(2) == 1
    assert auto_tok.decode(full, skip_special_tokens=True) == "The quick brown fox jumps"
    assert decode.generate(params, cfg, prompt, 50, eos_id=2) == new  # ours stops at the same token


def test_export_refuses_tokens_the_tokenizer_lacks(tokenizer, tmp_path):
    cfg = our_config("mha_untied")
    with pytest.raises(config_lib.InputError, match=r"^bos_token='<s>' \(data.bos_token\) is not a token of the exported"):
        hf.save_pretrained(random_params(cfg), cfg, tmp_path / "x", tokenizer=tokenizer, bos_token="<s>")
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_sharded_export_loads_in_transformers(tokenizer, tmp_path):
    cfg = our_config("gqa_tied")
    params = random_params(cfg, seed=3)
    out = hf.save_pretrained(params, cfg, tmp_path / "sharded", tokenizer=tokenizer, max_shard_bytes=20_000)
    assert (out / hf.INDEX_FILE).exists()
    tokens = random_tokens(VOCAB, seed=1)
    np.testing.assert_allclose(hf_logits(load_hf(out), tokens), our_logits(params, cfg, tokens), atol=ATOL, rtol=0)


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
    member_dir = commands.import_to_workdir(src, work)
    assert member_dir == workdir_lib.member_dir(work, hf.IMPORTED_MEMBER)
    assert (work / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()

    cfg, stages = workdir_lib.load_setup_for_eval(work)
    assert [s.name for s in stages] == [hf.IMPORTED_MEMBER]
    ckpts = checkpoint.Checkpoints(member_dir)
    meta = ckpts.read_meta(ckpts.latest_step())
    ckpts.close()
    assert (meta["member"], meta["stage"], meta["data_state"]) == (hf.IMPORTED_MEMBER, 0, None)
    assert meta["model"] == cfg.model.to_dict()
    params = _restore(member_dir, stages[0].model)
    assert_params_equal(params, hf.load_params(src)[0])
    with pytest.raises(config_lib.InputError, match="already holds a run"):
        commands.import_to_workdir(src, work)

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
    big_cfg = config_lib.members(ml_collections.ConfigDict(json.loads((work2 / "config.json").read_text())))[0].model
    grown = _restore(work2 / "stages" / "0-big", big_cfg)
    tokens = random_tokens(VOCAB, seed=4)
    np.testing.assert_allclose(our_logits(grown, big_cfg, tokens), hf_logits(hf_model, tokens), atol=ATOL, rtol=0)


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
    # no --member: every finished member, exactly as `sample` selects them
    proc = run_cli("export", "--workdir", str(tiny_family), "--out", str(out), check=True)
    cfg, stages = workdir_lib.load_setup_for_eval(tiny_family)
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
        params = jax.device_get(workdir_lib.member_params(tiny_family, stage))
        np.testing.assert_allclose(hf_logits(hf_model, tokens), our_logits(params, stage.model, tokens),
                                   atol=ATOL, rtol=0)
        hf_new = hf_greedy(hf_model, prompt_ids, n_new)
        assert len(hf_new) == n_new
        assert decode.generate(params, stage.model, prompt_ids, n_new) == hf_new, stage.name
        until_eos = hf_new[:hf_new.index(eos)] if eos in hf_new else hf_new
        assert prompt + samples[stage.name] == tok.decode(prompt_ids + until_eos), stage.name
