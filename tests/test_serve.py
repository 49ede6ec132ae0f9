"""KV-cache decoding and speculative decoding (jaxgrow/inference.py).

Models are random at a large init std (logits far from ties, so greedy comparisons are meaningful);
every random draw has a fixed seed, so the statistical test cannot flake.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import run_cli
from jaxgrow import config as config_lib
from jaxgrow.family import hf_runs as commands
from jaxgrow.config import InputError
from jaxgrow.data import tokenizers as tokenizers_lib
from jaxgrow.interop import hf
from jaxgrow.model import decoder, sharding
from jaxgrow.serve import decode, speculative


VOCAB = 96
# tied MHA; untied MHA; GQA (6 query heads on 2 KV heads); MQA with H*d != D
CONFIGS = {
    "tied": dict(hidden_size=48, ffn_size=96, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=12,
                 tie_embeddings=True),
    "untied": dict(hidden_size=48, ffn_size=96, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=12),
    "gqa": dict(hidden_size=48, ffn_size=96, num_layers=3, num_heads=6, num_kv_heads=2, head_dim=8,
                rope_theta=500000.0),
    "mqa": dict(hidden_size=64, ffn_size=128, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=32),
}


def make(name_or_kw, seed=0, vocab=VOCAB, std=0.3):
    kw = CONFIGS[name_or_kw] if isinstance(name_or_kw, str) else name_or_kw
    cfg = config_lib.model_config(vocab_size=vocab, init_std=std, **kw)
    return cfg, decoder.init_params(cfg, jax.random.key(seed))


def test_cached_forward_matches_model_logits_with_left_padding():
    cfg, params = make("gqa")
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, VOCAB, n).tolist() for n in (13, 5)]  # 13 + 1 <= 16
    tokens, pad = decode.left_pad(rows)
    frozen = ml_collections.FrozenConfigDict(cfg)
    cache = decode.init_cache(cfg, 2, tokens.shape[1] + 8)
    logits, cache = jax.jit(decode.forward, static_argnums=1)(params, frozen, jnp.asarray(tokens), cache,
                                                                 jnp.int32(0), jnp.asarray(pad))
    def reference(row):  # model.logits over the row right-padded to one shape (causal: padding after is inert)
        padded = np.zeros((1, 16), np.int32)
        padded[0, :len(row)] = row
        return np.asarray(decoder.logits(params, cfg, jnp.asarray(padded)))[0, :len(row)]

    for b, row in enumerate(rows):  # each row's real tokens see exactly what model.logits sees
        ref = reference(row)
        np.testing.assert_allclose(np.asarray(logits)[b, pad[b]:], ref, atol=2e-4, rtol=0)
        assert np.abs(ref).max() > 1.0
    # one more token through the cache = the full forward over the extended row
    nxt = np.asarray([[7], [11]], np.int32)
    step, _ = decode.forward(params, frozen, jnp.asarray(nxt), cache, jnp.int32(tokens.shape[1]), jnp.asarray(pad))
    for b, row in enumerate(rows):
        np.testing.assert_allclose(np.asarray(step)[b, 0], reference(row + [int(nxt[b, 0])])[-1], atol=2e-4, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_greedy_equals_full_recompute(name):
    cfg, params = make(name)
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6], list(range(20, 37))]
    new = decode.generate_batch(params, cfg, prompts, 24)
    for prompt, got in zip(prompts, new):
        assert got == decode.full_recompute_generate(params, cfg, prompt, 24), (name, prompt)


def test_sampling_eos_seeds_top_k_top_p_and_compilation_reuse():
    cfg, params = make("mqa")
    prompt = [1, 2, 3]
    greedy = decode.generate(params, cfg, prompt, 16)
    before = decode._decode._cache_size()
    decode.generate(params, cfg, prompt + [4, 5], 16, temperature=0.7, top_k=0, seed=3)  # same buckets, T traced
    assert decode._decode._cache_size() == before
    stop = greedy[5]
    assert decode.generate(params, cfg, prompt, 16, eos_id=stop) == greedy[:greedy.index(stop) + 1]
    rows = decode.generate_batch(params, cfg, [prompt, [8, 9]], 16, eos_id=stop)
    assert rows[0] == greedy[:greedy.index(stop) + 1] and rows[1] == decode.generate(params, cfg, [8, 9], 16,
                                                                                          eos_id=stop)
    assert decode.generate(params, cfg, prompt, 16, temperature=1.0, top_k=1, seed=5) == greedy
    assert decode.generate(params, cfg, prompt, 16, temperature=1.0, top_p=1e-6, seed=5) == greedy
    a = decode.generate(params, cfg, prompt, 24, temperature=1.0, seed=1)
    assert a == decode.generate(params, cfg, prompt, 24, temperature=1.0, seed=1)
    assert a != decode.generate(params, cfg, prompt, 24, temperature=1.0, seed=2)
    assert decode.generate(params, cfg, prompt, 0) == []

    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.15, 0.1]]))
    kept = lambda w: np.isfinite(np.asarray(w))[0].tolist()  # noqa: E731
    assert kept(decode.warp(logits, 1.0, 0, 0.5)) == [True, False, False, False]
    assert kept(decode.warp(logits, 1.0, 0, 0.75)) == [True, True, False, False]
    assert kept(decode.warp(logits, 1.0, 0, 0.8)) == [True, True, True, False]
    assert kept(decode.warp(logits, 1.0, 3, 1.0)) == [True, True, True, False]
    assert kept(decode.warp(logits, 1.0, 3, 0.6)) == [True, True, False, False]


def test_generate_on_sharded_params(devices8):
    cfg, params = make("gqa")
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 4, "tensor": 2, "dcn_data": 1}), devices8)
    sharded = jax.device_put(params, sharding.param_shardings(cfg, mesh))
    assert not sharded["layers"]["mlp"]["up_proj"].sharding.is_fully_replicated
    prompts = [[5, 4, 3], [1, 2, 3, 4, 5, 6, 7]]
    draft_cfg, draft = make(SMALL, seed=7)
    with jax.set_mesh(mesh):
        got = decode.generate_batch(sharded, cfg, prompts, 16)
        spec = speculative.speculative_batch(sharded, cfg, jax.device_put(draft, sharding.param_shardings(draft_cfg, mesh)),
                                           draft_cfg, prompts, 16, gamma=3)
    assert got == decode.generate_batch(params, cfg, prompts, 16) == spec.tokens


# ----------------------------------------------------------------------------------------------
# Speculative decoding

SMALL = dict(hidden_size=32, ffn_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)


def test_speculative_greedy_equals_target_greedy():
    target_cfg, target = make("gqa", seed=0)
    draft_cfg, draft = make(SMALL, seed=7)
    prompts = [[3, 1, 4, 1, 5], [2, 7]]
    alone = decode.generate_batch(target, target_cfg, prompts, 30)
    for gamma in (1, 4):
        r = speculative.speculative_batch(target, target_cfg, draft, draft_cfg, prompts, 30, gamma=gamma)
        assert r.tokens == alone, gamma
        assert 0 <= r.acceptance_rate < 0.5 and r.target_calls >= 30 * 2 / (gamma + 1)
    stop = alone[0][9]  # eos is a traced argument: same compilation as gamma=4 above
    r = speculative.speculative_batch(target, target_cfg, draft, draft_cfg, prompts, 30, gamma=4, eos_id=stop)
    assert r.tokens[0] == alone[0][:alone[0].index(stop) + 1]
    one = speculative.speculative_generate(target, target_cfg, draft, draft_cfg, prompts[1], 30, gamma=4)  # unbatched
    assert one.tokens[0] == alone[1]
    # the target drafting for itself: every draft token is accepted, gamma + 1 tokens per target call
    r = speculative.speculative_batch(target, target_cfg, target, target_cfg, prompts, 30, gamma=4)
    assert r.tokens == alone and r.acceptance_rate == 1.0 and r.tokens_per_target_call == 5.0


def _warped_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Reference (numpy) of the sampling distribution: temperature, top-k, then nucleus."""
    z = logits.astype(np.float64) / temperature
    order = np.argsort(-z)
    keep = np.zeros_like(z, bool)
    keep[order[:top_k or len(z)]] = True
    p = np.where(keep, np.exp(z - z.max()), 0)
    p /= p.sum()
    mass, nucleus = 0.0, np.zeros_like(keep)
    for i in order:
        if not keep[i] or mass >= top_p:
            break
        nucleus[i], mass = True, mass + p[i]
    p = np.where(nucleus, p, 0)
    return p / p.sum()


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square goodness of fit; cells with expected count < 5 pooled into one."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(jax.scipy.special.gammaincc((len(obs) - 1) / 2, stat / 2))


def test_speculative_sampling_is_distributed_as_the_target():
    """Empirical joint of the first two tokens and marginal of the third vs the target's exact
    distributions (temperature 0.8, top-k 6, top-p 0.9 on a 8-token vocabulary): chi-square p > 0.01.
    The same samples against the draft's distribution must fail (the test has power)."""
    vocab, n, temp, top_k, top_p = 8, 6000, 0.8, 6, 0.9
    target_cfg, target = make(dict(SMALL, num_layers=2), seed=1, vocab=vocab, std=0.8)
    draft_cfg, draft = make(dict(SMALL, hidden_size=16), seed=2, vocab=vocab, std=0.8)
    prompt = [1, 2]
    r = speculative.speculative_batch(target, target_cfg, draft, draft_cfg, [prompt] * n, 3, gamma=2, temperature=temp,
                                    top_k=top_k, top_p=top_p, seed=0)
    samples = np.asarray(r.tokens)
    assert samples.shape == (n, 3) and 0.02 < r.acceptance_rate < 0.95

    def exact(params, cfg):
        logits = lambda seqs: np.asarray(decoder.logits(params, cfg, jnp.asarray(seqs)))[:, -1]  # noqa: E731
        p1 = _warped_probs(logits([prompt])[0], temp, top_k, top_p)
        pairs = [prompt + [a, b] for a in range(vocab) for b in range(vocab)]
        l2 = logits([prompt + [a] for a in range(vocab)])
        joint = np.stack([p1[a] * _warped_probs(l2[a], temp, top_k, top_p) for a in range(vocab)])  # [a, b]
        l3 = logits(pairs)
        third = sum(joint.reshape(-1)[i] * _warped_probs(l3[i], temp, top_k, top_p) for i in range(len(pairs)))
        return joint.reshape(-1), third

    joint_counts = np.bincount(samples[:, 0] * vocab + samples[:, 1], minlength=vocab * vocab)
    third_counts = np.bincount(samples[:, 2], minlength=vocab)
    joint, third = exact(target, target_cfg)
    assert _chi2_pvalue(joint_counts, joint) > 0.01
    assert _chi2_pvalue(third_counts, third) > 0.01
    draft_joint, _ = exact(draft, draft_cfg)
    assert _chi2_pvalue(joint_counts, draft_joint) < 1e-6


def test_draft_acceptance_measure():
    target_cfg, target = make("gqa", seed=0)
    draft_cfg, draft = make(SMALL, seed=7)
    prompts = [[3, 1, 4, 1, 5], [2, 7, 1]]
    a = speculative.draft_acceptance(draft, draft_cfg, target, target_cfg, prompts, 12, gamma=3)
    assert set(a) >= {"temperature_0", "temperature_1", "gamma", "prompts", "new_tokens"}
    assert (a["gamma"], a["prompts"], a["new_tokens"]) == (3, 2, 12)
    self_a = speculative.draft_acceptance(target, target_cfg, target, target_cfg, prompts, 12, gamma=3)
    assert self_a["temperature_0"] == 1.0 and self_a["temperature_1"] > 0.99  # a model agrees with itself
    assert 0 <= a["temperature_0"] < 1 and 0 <= a["temperature_1"] < 1


def test_bad_input_library():
    target_cfg, target = make("gqa")
    draft_cfg, draft = make(SMALL, seed=7)
    other_vocab_cfg, other = make(SMALL, vocab=VOCAB + 1)
    args = (target, target_cfg, draft, draft_cfg, [1, 2], 4)
    with pytest.raises(InputError, match="--draft: vocab_size 97 differs"):
        speculative.speculative_generate(target, target_cfg, other, other_vocab_cfg, [1, 2], 4)
    with pytest.raises(InputError, match="--draft: has .* more than --member"):
        speculative.speculative_generate(draft, draft_cfg, target, target_cfg, [1, 2], 4)
    with pytest.raises(InputError, match="--gamma=0 must be >= 1"):
        speculative.speculative_generate(*args, gamma=0)
    for top_p in (0.0, 1.5, -0.1):
        with pytest.raises(InputError, match=r"--top_p=.* must be in \(0, 1\]"):
            decode.generate(target, target_cfg, [1, 2], 4, temperature=1.0, top_p=top_p)
    short = config_lib.model_config(vocab_size=VOCAB, rope_theta=100.0, **SMALL)
    assert decode.rope_context(short) == 256  # 2*pi*100^(14/16) = 353 -> 256
    assert decode.rope_context(config_lib.model_config()) == 32768  # theta 1e4, head_dim 64
    with pytest.raises(InputError, match="--prompt has 300 tokens, longer than the model's context of 256"):
        decode.generate(decoder.init_params(short, jax.random.key(0)), short, [1] * 300, 4)


# ----------------------------------------------------------------------------------------------
# CLI on imported (random) workdirs: no training needed

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. Call me Ishmael. Some years ago - never mind how long precisely - having little money. ")


def _workdir(tmp_path, name, model_kw, seed, vocab_text=TEXT, vocab=VOCAB * 3):
    tok = tokenizers_lib.train_bpe([vocab_text] * 4, vocab)
    cfg = config_lib.model_config(vocab_size=tok.get_vocab_size(), init_std=0.3, **model_kw)
    params = jax.device_get(decoder.init_params(cfg, jax.random.key(seed)))
    hf_dir = hf.save_pretrained(params, cfg, tmp_path / f"{name}_hf", tokenizer=tok)
    commands.import_to_workdir(hf_dir, tmp_path / name)
    return tmp_path / name


def _error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("jaxgrow: error:"), proc.stderr[-2000:]
    return lines[0]


@pytest.mark.slow
def test_sample_draft_cli_and_bad_input(tmp_path):
    target = _workdir(tmp_path, "target", dict(CONFIGS["gqa"], rope_theta=100.0), 0)
    draft = _workdir(tmp_path, "draft", SMALL, 7)
    other = _workdir(tmp_path, "other", SMALL, 7, vocab_text=TEXT.upper())
    base = ("sample", "--workdir", str(target), "--member", "model", "--prompt", "Call me", "--max_new_tokens", "12")
    proc = run_cli(*base, "--draft", "model", "--draft_workdir", str(draft), "--gamma", "3", check=True)
    assert "acceptance rate" in proc.stdout and "tokens per target call" in proc.stdout and "speedup" in proc.stdout
    alone = run_cli(*base, check=True)
    assert proc.stdout.split("\n\n")[0].split("\n", 1)[1] == alone.stdout.split("\n\n")[0].split("\n", 1)[1]

    assert "tokenizer differs" in _error(run_cli(*base, "--draft", "model", "--draft_workdir", str(other)))
    larger = ("sample", "--workdir", str(draft), "--member", "model", "--prompt", "Call me", "--draft", "model",
              "--draft_workdir", str(target))
    assert "the draft must be the smaller model" in _error(run_cli(*larger))
    assert "--gamma=0 must be >= 1" in _error(run_cli(*base, "--draft", "model", "--draft_workdir", str(draft),
                                                       "--gamma", "0"))
    assert "--top_p=1.5 must be in (0, 1]" in _error(run_cli(*base, "--top_p", "1.5"))
    long_prompt = ("sample", "--workdir", str(target), "--member", "model", "--prompt", TEXT * 6)
    assert "longer than the model's context of 128" in _error(run_cli(*long_prompt))

    exported = run_cli("export", "--workdir", str(target), "--member", "model", "--out", str(tmp_path / "bf16"),
                       "--export_dtype", "bfloat16", check=True)
    assert exported.returncode == 0
    hf_cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert hf_cfg["torch_dtype"] == "bfloat16" and hf_cfg["max_position_embeddings"] == 128
    params, _ = hf.load_params(tmp_path / "bf16")
    bits = np.asarray(params["layers"]["mlp"]["up_proj"], np.float32).view(np.uint32)
    assert np.all(bits & 0xFFFF == 0)  # bfloat16 values, upcast exactly


@pytest.mark.slow
def test_family_report_and_evaluate_speculative(tiny_family, tmp_path):
    report = json.loads((tiny_family / "report.json").read_text())
    members = report["members"]
    for m, nxt in zip(members, members[1:]):
        a = m["draft_acceptance"]
        assert a["target"] == nxt["name"] and 0 < a["temperature_0"] <= 1 and 0 < a["temperature_1"] <= 1
    assert members[-1]["draft_acceptance"] is None
    assert "draft acceptance for next (T=0 / T=1)" in (tiny_family / "report.md").read_text()

    import shutil  # noqa: PLC0415

    work = tmp_path / "w"
    shutil.copytree(tiny_family, work)
    proc = run_cli("evaluate", "--workdir", str(work), "--speculative", check=True)
    ev = json.loads((work / "eval.json").read_text())
    for m in members[:-1]:  # same prompts, seeds and settings as the report
        assert ev["members"][m["name"]]["draft_acceptance"]["temperature_0"] == m["draft_acceptance"]["temperature_0"]
    assert "acceptance" in proc.stdout
    assert "--gamma=0" in _error(run_cli("evaluate", "--workdir", str(work), "--speculative", "--gamma", "0"))
