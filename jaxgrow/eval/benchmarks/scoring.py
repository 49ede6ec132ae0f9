"""Batched, jitted log-likelihood scoring of benchmark requests on the mesh, and lm-evaluation-harness's
metrics with their standard errors; the in-training benchmark hook.

Rows are sorted by length, padded to a bucket and split into batches whose rows are sharded over the
mesh's data axes (jax.make_array_from_callback: each process supplies only its addressable rows; every
process builds the same request list). A request's log-likelihood is the sum of log p over the
continuation's tokens, and it is "greedy" when each of them is the argmax."""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxgrow import config as config_lib
from jaxgrow.eval.benchmarks import requests as bench_requests, tasks as bench_tasks
from jaxgrow.model import decoder, sharding


@functools.lru_cache(maxsize=8)
def _score_fn(model_cfg, mesh):


    def fn(params, inputs, targets, mask):
        logits = decoder.logits(params, model_cfg, inputs).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        top = jnp.argmax(logits, axis=-1)
        lls, greedy = [], []
        for k in range(targets.shape[1]):  # requests sharing a row: gather each one's targets
            t, m = targets[:, k], mask[:, k]
            tok = jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
            lls.append(jnp.sum(jnp.where(m, tok, 0.0), axis=-1))
            greedy.append(jnp.all(jnp.where(m, top == t, True), axis=-1))
        return jnp.stack(lls, 1), jnp.stack(greedy, 1)

    rep = sharding.replicated(mesh)
    return jax.jit(fn, out_shardings=(rep, rep))


def _batch_rows(model_cfg, mesh, batch_tokens: int | None, length: int, remaining: int) -> int:
    """Rows per batch: what fits the token budget (logits stay ~128 MiB), but no more than the rows
    left at this length rounded up to a power of two (few shapes to compile, little padding), and a
    multiple of the data shards."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    budget = batch_tokens or int(min(max(2 ** 25 // model_cfg.vocab_size, 1024), 32768))
    rows = min(max(1, budget // length), 1 << max(remaining - 1, 0).bit_length())
    return -(-rows // shards) * shards


def score_requests(params: Any, model_cfg: Any, tokenizer, requests: list[tuple[str, str]], mesh,
                   max_length: int = bench_requests.MAX_LENGTH, batch_tokens: int | None = None, desc: str = "",
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood [n], greedy [n]) of each (context, continuation) request."""


    rows = bench_requests.request_rows(bench_requests.encode_requests(tokenizer, requests), max_length)
    fn = _score_fn(config_lib.frozen(model_cfg), mesh)
    lls = np.zeros(len(requests), np.float64)
    greedy = np.zeros(len(requests), bool)
    bar = tqdm(total=len(requests), desc=desc, unit="req", dynamic_ncols=True, leave=False,
               disable=not (progress and jax.process_index() == 0))

    def put(x: np.ndarray):
        return jax.make_array_from_callback(x.shape, sharding.batch_sharding(mesh, x.ndim), lambda idx: x[idx])

    i = 0
    with jax.set_mesh(mesh):
        while i < len(rows):
            length = bench_requests.length_bucket(len(rows[i].inputs))
            remaining = next((j for j in range(i, len(rows)) if bench_requests.length_bucket(len(rows[j].inputs)) != length), len(rows)) - i
            n_rows = _batch_rows(model_cfg, mesh, batch_tokens, length, remaining)
            batch = rows[i:i + n_rows]
            i += len(batch)
            k = 1 << (max(len(r.requests) for r in batch) - 1).bit_length()
            inputs = np.zeros((n_rows, length), np.int32)
            targets = np.zeros((n_rows, k, length), np.int32)
            mask = np.zeros((n_rows, k, length), bool)
            for b, row in enumerate(batch):
                n = len(row.inputs)
                inputs[b, :n] = row.inputs
                for j, (_, tgt, n_cont) in enumerate(row.requests):
                    targets[b, j, :n] = tgt
                    mask[b, j, n - n_cont:n] = True
            ll, gr = jax.device_get(fn(params, put(inputs), put(targets), put(mask)))
            for b, row in enumerate(batch):
                for j, (r, _, _) in enumerate(row.requests):
                    lls[r], greedy[r] = ll[b, j], gr[b, j]
            bar.update(sum(len(r.requests) for r in batch))
    bar.close()
    return lls, greedy


# ----------------------------------------------------------------------------------------------
# Metrics (lm-eval's definitions)


def mean_stderr(values: Iterable[float]) -> float | None:
    """lm-eval's mean_stderr: sample standard deviation (ddof=1) / sqrt(n)."""
    x = np.asarray(list(values), np.float64)
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def pooled_stderr(stderrs: list[float], sizes: list[int]) -> float | None:
    """lm-eval's pooled_sample_stderr for a group averaged with weight_by_size."""
    if len(sizes) < 1 or sum(sizes) - len(sizes) <= 0 or any(s is None for s in stderrs):
        return None
    var = sum((n - 1) * se ** 2 * n for n, se in zip(sizes, stderrs)) / (sum(sizes) - len(sizes))
    return float(math.sqrt(var / sum(sizes)))


def bits_per_byte(lls: np.ndarray, n_bytes: np.ndarray) -> tuple[float, float | None]:
    """-sum(ll) / ln 2 / sum(bytes), and its delta-method standard error (ratio of two means)."""
    a = -np.asarray(lls, np.float64) / math.log(2)
    b = np.asarray(n_bytes, np.float64)
    ratio = float(a.sum() / b.sum())
    n = len(a)
    if n < 2:
        return ratio, None
    resid = a - ratio * b
    return ratio, float(math.sqrt(np.sum(resid ** 2) / (n * (n - 1))) / b.mean())


def task_metrics(task: str, items: list[bench_tasks.Item], lls: list[np.ndarray], greedy: list[np.ndarray]) -> tuple[dict, list[dict]]:
    """Metrics with standard errors, and one sample record per item."""
    spec = bench_tasks.TASKS[task]
    out: dict[str, Any] = {"n": len(items)}
    samples = []
    if spec.kind == "mc":
        acc, acc_norm = [], []
        for it, ll in zip(items, lls):
            pred = int(np.argmax(ll))
            pred_norm = int(np.argmax(ll / np.array([float(len(c)) for c in it.choices])))
            acc.append(float(pred == it.gold))
            acc_norm.append(float(pred_norm == it.gold))
            rec = {"id": it.id, "loglik": [float(v) for v in ll], "pred": pred, "gold": it.gold}
            if "acc_norm" in spec.metrics:
                rec["pred_norm"] = pred_norm
            if it.group:
                rec["subject"] = it.group
            samples.append(rec)
        values = {"acc": acc, "acc_norm": acc_norm}
        if task == "mmlu":
            subjects: dict[str, list[float]] = {}
            for it, a in zip(items, acc):
                subjects.setdefault(it.group, []).append(a)
            per = {s: {"acc": float(np.mean(v)), "acc_stderr": mean_stderr(v), "n": len(v)} for s, v in subjects.items()}
            sizes = [p["n"] for p in per.values()]
            out["acc"] = float(sum(p["acc"] * p["n"] for p in per.values()) / sum(sizes))
            out["acc_stderr"] = pooled_stderr([p["acc_stderr"] for p in per.values()], sizes)
            out["subjects"] = per
        else:
            for m in spec.metrics:
                out[m] = float(np.mean(values[m]))
                out[f"{m}_stderr"] = mean_stderr(values[m])
    else:
        ll = np.array([float(v[0]) for v in lls])
        n_bytes = np.array([len(it.continuations[0].encode("utf-8")) for it in items])
        if spec.kind == "greedy_bpb":
            hits = [float(g[0]) for g in greedy]
            out["acc"], out["acc_stderr"] = float(np.mean(hits)), mean_stderr(hits)
        out["bits_per_byte"], out["bits_per_byte_stderr"] = bits_per_byte(ll, n_bytes)
        for it, v, g, nb in zip(items, ll, greedy, n_bytes):
            # pred: whether greedy decoding reproduces the gold continuation
            samples.append({"id": it.id, "loglik": [float(v)], "bytes": int(nb), "pred": bool(g[0]),
                            "gold": it.continuations[0]})
    return out, samples


def score_task(params: Any, model_cfg: Any, tokenizer, task: str, items: list[bench_tasks.Item], mesh, shots: int = 0,
               max_length: int = bench_requests.MAX_LENGTH, batch_tokens: int | None = None, progress: bool = True,
               desc: str = "") -> tuple[dict, list[dict]]:
    requests = [(c, x) for it in items for c, x in zip(it.contexts, it.continuations)]
    ll, gr = score_requests(params, model_cfg, tokenizer, requests, mesh, max_length, batch_tokens,
                            desc=desc or task, progress=progress)
    lls, greedy, k = [], [], 0
    for it in items:
        n = len(it.continuations)
        lls.append(ll[k:k + n])
        greedy.append(gr[k:k + n])
        k += n
    metrics, samples = task_metrics(task, items, lls, greedy)
    metrics.update(shots=bench_tasks.task_shots(task, shots), split=bench_tasks.TASKS[task].split)
    return metrics, samples


@functools.lru_cache(maxsize=4)
def _cached_items(suite: str, shots: int, limit: int | None) -> dict:
    return {t: bench_tasks.load_items(t, shots, limit) for tasks in bench_tasks.parse_suites(suite).values() for t in tasks}


def in_loop(ev: Any, model_cfg: Any, params: Any, tokenizer, record: dict, metrics_log) -> None:
    """A training hook's work (family/pipeline.py schedules it every config.eval.every_steps steps and at the end of
    each stage): scores the first config.eval.limit items of each task of config.eval.suite with the run's tokenizer
    and logs `bench/<task>/<metric>` to metrics.jsonl and TensorBoard."""
    mesh = jax.tree.leaves(params)[0].sharding.mesh
    out = dict(record, bench_suite=ev.suite, bench_limit=ev.limit)
    for t, items in _cached_items(ev.suite, ev.shots, ev.limit).items():
        metrics, _ = score_task(params, model_cfg, tokenizer, t, items, mesh, ev.shots, progress=False)
        for m in bench_tasks.TASKS[t].metrics:
            out[f"bench/{t}/{m}"] = metrics[m]
            out[f"bench/{t}/{m}_stderr"] = metrics[f"{m}_stderr"]
    metrics_log.write(out)
