"""Evaluation of family members: held-out loss/perplexity, KL between adjacent members, and
multiple-choice tasks scored by log-likelihood.

Multiple-choice convention (lm-evaluation-harness): each choice is scored as the summed
log-probability of its tokens given the context, with the choice preceded by a single space
(`target_delimiter`); context and continuation are tokenized separately and concatenated. `acc`
picks the highest summed log-likelihood; `acc_norm` (what we report as accuracy) divides it by the
continuation's length in characters first, so long choices are not penalised for their length.
Task files are JSONL: {"question" | "context": str, "choices": [str, ...], "answer": int}.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrow.model import decoder, losses


TARGET_DELIMITER = " "


# ----------------------------------------------------------------------------------------------
# Loss and KL


@functools.lru_cache(maxsize=16)
def _pair_fn(cfg_a, cfg_b):
    def fn(params_a, params_b, batch):
        inputs = batch[:, :-1]
        la = decoder.logits(params_a, cfg_a, inputs)
        lb = decoder.logits(params_b, cfg_b, inputs)
        return losses.kl_divergence(la, lb), losses.kl_divergence(lb, la)

    return jax.jit(fn)


def kl_between(params_a: Any, cfg_a: Any, params_b: Any, cfg_b: Any, batches: list) -> tuple[float, float]:
    """(KL(p_a || p_b), KL(p_b || p_a)): per-token mean in nats over the held-out batches."""
    from ml_collections import FrozenConfigDict  # noqa: PLC0415

    fn = _pair_fn(FrozenConfigDict(cfg_a), FrozenConfigDict(cfg_b))
    ab = ba = 0.0
    for b in batches:
        x, y = fn(params_a, params_b, b)
        ab, ba = ab + float(x), ba + float(y)
    return ab / len(batches), ba / len(batches)


def eval_loss(params: Any, cfg: Any, batches: list, document_eos: int | None = None) -> float:
    """Mean held-out loss; with document_eos (data.document_masking), scored as it was trained."""
    return losses.evaluate_loss(jax.jit(losses.make_eval_step(cfg, document_eos)), params, batches)


# ----------------------------------------------------------------------------------------------
# Multiple-choice tasks


def load_tasks(path: str | Path) -> list[dict]:
    """Reads a JSONL task file; raises ValueError naming the file and line on a malformed item."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--tasks: {path} does not exist; give a JSONL file of multiple-choice items")
    items = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                context = obj.get("context", obj.get("question"))
                choices, answer = obj["choices"], int(obj["answer"])
                assert isinstance(context, str) and isinstance(choices, list) and len(choices) >= 2
                assert all(isinstance(c, str) and c for c in choices) and 0 <= answer < len(choices)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AssertionError):
                raise ValueError(f"--tasks: {path}:{i} must be {{\"context\"|\"question\": str, \"choices\": "
                                 "[str, ...], \"answer\": index}") from None
            items.append({"context": context, "choices": choices, "answer": answer})
    if not items:
        raise ValueError(f"--tasks: {path} holds no items")
    return items


def _requests(items: list[dict], tokenizer, seq_len: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Token rows [n, seq_len+1], continuation masks over target positions [n, seq_len], (item, choice) ids."""
    rows, masks, ids = [], [], []
    for i, item in enumerate(items):
        ctx = tokenizer.encode(item.get("context", item.get("question", ""))).ids
        for j, choice in enumerate(item["choices"]):
            cont = tokenizer.encode(TARGET_DELIMITER + choice).ids
            seq = (ctx + cont)[-(seq_len + 1):]
            n_cont = min(len(cont), len(seq) - 1)
            row = np.zeros(seq_len + 1, np.int32)
            row[:len(seq)] = seq
            mask = np.zeros(seq_len, np.float32)
            mask[len(seq) - 1 - n_cont:len(seq) - 1] = 1.0  # targets that are continuation tokens
            rows.append(row)
            masks.append(mask)
            ids.append((i, j))
    return np.stack(rows), np.stack(masks), ids


@functools.lru_cache(maxsize=16)
def _loglik_fn(cfg):
    def fn(params, rows, masks):
        out = decoder.logits(params, cfg, rows[:, :-1])
        logp = jax.nn.log_softmax(out, axis=-1)
        tok = jnp.take_along_axis(logp, rows[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(tok * masks, axis=-1)

    return jax.jit(fn)


def score_tasks(params: Any, cfg: Any, tokenizer, items: list[dict], seq_len: int, batch: int = 32) -> dict:
    """{'acc_norm', 'acc', 'n'} for one model on a list of items."""
    from ml_collections import FrozenConfigDict  # noqa: PLC0415

    rows, masks, ids = _requests(items, tokenizer, seq_len)
    fn = _loglik_fn(FrozenConfigDict(cfg))
    n = len(rows)
    pad = (-n) % batch
    rows = np.concatenate([rows, np.zeros((pad, rows.shape[1]), np.int32)])
    masks = np.concatenate([masks, np.zeros((pad, masks.shape[1]), np.float32)])
    ll = np.concatenate([np.asarray(fn(params, rows[i:i + batch], masks[i:i + batch])) for i in range(0, len(rows), batch)])[:n]
    per_item: dict[int, list[tuple[float, float]]] = {}
    for (i, j), value in zip(ids, ll):
        per_item.setdefault(i, []).append((float(value), float(value) / len(items[i]["choices"][j])))
    acc = np.mean([int(np.argmax([s for s, _ in v])) == items[i]["answer"] for i, v in per_item.items()])
    acc_norm = np.mean([int(np.argmax([s for _, s in v])) == items[i]["answer"] for i, v in per_item.items()])
    return {"acc_norm": float(acc_norm), "acc": float(acc), "n": len(items)}


def make_continuation_tasks(texts: list[str], n_items: int = 200, context_words: int = 40, choice_words: int = 10,
                            n_choices: int = 4, seed: int = 0) -> list[dict]:
    """'Which continuation follows this passage?' items from held-out text; distractors are
    continuations of other, random passages of the same text."""
    words = " ".join(texts).split()
    span = context_words + choice_words
    if len(words) < span * (n_choices + 1):
        raise ValueError(f"held-out text has {len(words)} words; need at least {span * (n_choices + 1)} for tasks")
    rng = random.Random(seed)
    starts = list(range(0, len(words) - span, span))
    rng.shuffle(starts)
    items = []
    for start in starts[:n_items]:
        context = " ".join(words[start:start + context_words])
        right = " ".join(words[start + context_words:start + span])
        others = rng.sample([s for s in starts if abs(s - start) >= span], n_choices - 1)
        choices = [" ".join(words[s + context_words:s + span]) for s in others]
        answer = rng.randrange(n_choices)
        choices.insert(answer, right)
        items.append({"context": context, "choices": choices, "answer": answer})
    return items
