"""Cross-size consistency loss, its FLOPs accounting, the multiple-choice scorer, the reproduction."""

import importlib
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import REPO

from jaxgrow import config as config_lib
from jaxgrow import expand
from jaxgrow.data import tokenizers as tokenizers_lib
from jaxgrow.eval import evaluate
from jaxgrow.family import budgets
from jaxgrow.model import decoder, flops, losses
from jaxgrow.train import trainer

SRC = config_lib.model_config(vocab_size=97, hidden_size=32, ffn_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                          head_dim=8, init_std=0.3)
DST = config_lib.model_config(**{**SRC.to_dict(), "hidden_size": 48, "ffn_size": 64, "num_layers": 3, "num_heads": 6,
                             "num_kv_heads": 3})
TOKENS = jax.random.randint(jax.random.key(0), (4, 17), 0, 97)


def consistency_metrics(teacher_params, student_params, weight=1.0):
    opt = optax.sgd(0.0)  # only the metrics matter here
    cons = trainer.Consistency(SRC, weight, active_steps=10)
    step = jax.jit(trainer.make_train_step(DST, opt, lambda s: jnp.float32(0.0), distill=cons))
    state = trainer.new_state(student_params, opt.init(student_params))
    _, metrics = step(state, TOKENS, teacher_params)
    return metrics


def test_consistency_kl_is_zero_for_the_same_function_and_positive_otherwise():
    teacher = decoder.init_params(SRC, jax.random.key(1))
    # literally the same model: exactly 0
    same = losses.kl_divergence(decoder.logits(teacher, SRC, TOKENS), decoder.logits(teacher, SRC, TOKENS))
    assert float(same) == 0.0
    # right after an exact expansion the student is the same function
    student = expand.expand_params(teacher, SRC, DST, key=jax.random.key(2))
    m = consistency_metrics(teacher, student)
    assert abs(float(m["distill_kl"])) < 1e-6  # float32 rounding of identical functions
    assert float(m["total_loss"]) == pytest.approx(float(m["loss"]), abs=1e-6)
    # a different student: positive, and it enters the loss with its weight
    other = decoder.init_params(DST, jax.random.key(3))
    m = consistency_metrics(teacher, other, weight=0.7)
    assert float(m["distill_kl"]) > 1e-3
    assert float(m["total_loss"]) == pytest.approx(float(m["loss"]) + 0.7 * float(m["distill_kl"]), rel=1e-5)


def test_consistency_weight_decays_to_zero_over_the_active_fraction():
    cons = trainer.Consistency(SRC, 0.5, active_steps=10)
    values = [float(cons.weight_at(jnp.int32(s))) for s in (0, 5, 10, 20)]
    assert values == pytest.approx([0.5, 0.25, 0.0, 0.0])


def test_flops_accounting_adds_the_teachers_forward():
    c = importlib.import_module("configs.family_tiny").get_config()
    plain = budgets.budgets(c)
    c.consistency.weight, c.consistency.fraction = 0.5, 0.5
    with_teacher = budgets.budgets(c)
    per_step = c.data.batch_size * c.data.seq_len
    assert with_teacher[0].train_flops == plain[0].train_flops  # no teacher for the first member
    for prev, a, b in zip(with_teacher, plain[1:], with_teacher[1:]):
        assert b.teacher_active_steps == round(0.5 * b.steps)
        teacher = b.teacher_active_steps * per_step * flops.forward_flops_per_token(prev.model, c.data.seq_len)
        assert b.train_flops == pytest.approx(a.train_flops + teacher)
        assert teacher > 0


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizers_lib.train_bpe(["the cat sat on the mat. a dog ran in the fog."] * 30, 300)


def constant_model(scores: np.ndarray):
    """A model whose next-token distribution is softmax(scores) at every position."""
    cfg = config_lib.model_config(**{**SRC.to_dict(), "num_layers": 1, "vocab_size": len(scores)})
    params = decoder.init_params(cfg, jax.random.key(0))
    params = jax.tree.map(jnp.zeros_like, params)
    params["layers"]["attn_norm"]["scale"] = jnp.ones_like(params["layers"]["attn_norm"]["scale"])
    params["layers"]["mlp_norm"]["scale"] = jnp.ones_like(params["layers"]["mlp_norm"]["scale"])
    params["final_norm"]["scale"] = jnp.ones((cfg.hidden_size,))
    u = np.zeros(cfg.hidden_size, np.float32)
    u[0] = 1.0
    params["embed"]["embedding"] = jnp.tile(u, (cfg.vocab_size, 1))  # every token embeds to u
    normed = u / np.sqrt(np.mean(u ** 2) + cfg.norm_eps)
    head = np.zeros((cfg.hidden_size, cfg.vocab_size), np.float32)
    head[0] = scores / normed[0]
    params["lm_head"]["kernel"] = jnp.asarray(head)
    return params, cfg


def test_scorer_picks_the_unambiguous_answer(tokenizer):
    choices = ["the cat sat", "a dog ran in the fog", "mat"]
    scores = np.full(300, -10.0, np.float32)
    scores[tokenizer.encode(" " + choices[1]).ids] = 10.0  # only the second choice's tokens are likely
    params, cfg = constant_model(scores)
    items = [{"context": "on the", "choices": choices, "answer": 1}, {"question": "x", "choices": choices[::-1], "answer": 1}]
    result = evaluate.score_tasks(params, cfg, tokenizer, items, seq_len=32, batch=4)
    assert result == {"acc_norm": 1.0, "acc": 1.0, "n": 2}


def test_scorer_normalisation_matches_a_hand_computation(tokenizer):
    choices = ["the cat", "a dog ran in the fog", "mat"]
    for seed in range(200):  # scores under which summed and per-character log-likelihood disagree
        scores = np.random.default_rng(seed).normal(size=300).astype(np.float32) * 2
        logp = np.asarray(jax.nn.log_softmax(jnp.asarray(scores)))
        ll = [float(sum(logp[t] for t in tokenizer.encode(" " + c).ids)) for c in choices]
        norm = [v / len(c) for v, c in zip(ll, choices)]
        if np.argmax(ll) != np.argmax(norm):
            break
    else:
        pytest.fail("no disagreeing scores found")
    params, cfg = constant_model(scores)
    rows, masks, _ = evaluate._requests([{"context": "on the", "choices": choices, "answer": 0}], tokenizer, 32)
    got = np.asarray(evaluate._loglik_fn(ml_collections.FrozenConfigDict(cfg))(params, rows, masks))
    np.testing.assert_allclose(got, ll, rtol=1e-5, atol=1e-5)  # summed log-probs of the continuation tokens
    items = [{"context": "on the", "choices": choices, "answer": int(np.argmax(norm))},
             {"context": "on the", "choices": choices, "answer": int(np.argmax(ll))}]
    result = evaluate.score_tasks(params, cfg, tokenizer, items, seq_len=32, batch=4)
    assert result["acc_norm"] == 0.5 and result["acc"] == 0.5  # each convention gets its own item right


def test_task_file_loading_and_generation(tmp_path):
    items = evaluate.make_continuation_tasks(["word%d" % i for i in range(3000)], n_items=20, seed=3)
    assert len(items) == 20 and all(len(i["choices"]) == 4 for i in items)
    for item in items:  # the right continuation follows the context in the source text
        first = int(item["context"].split()[-1][4:])
        assert item["choices"][item["answer"]].split()[0] == f"word{first + 1}"
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    assert evaluate.load_tasks(path) == items
    path.write_text('{"context": "a", "choices": ["b"], "answer": 3}\n')
    with pytest.raises(ValueError, match=f"{path}:1"):
        evaluate.load_tasks(path)


def test_shipped_task_file_is_valid():
    items = evaluate.load_tasks(REPO / "tasks" / "shakespeare_continuation.jsonl")
    assert len(items) >= 100 and {len(i["choices"]) for i in items} == {4}
