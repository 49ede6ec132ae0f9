"""Benchmark items to scoring requests, as lm-evaluation-harness's HFLM._encode_pair: trailing spaces of
the context move to the continuation; context and context+continuation are tokenized without special
tokens; the continuation's tokens are whole[len(context_tokens):]; requests that share the same input
tokens (e.g. MMLU's A/B/C/D) share one row."""

from __future__ import annotations

import dataclasses
from typing import Callable


MAX_LENGTH = 2048  # lm-eval's HFLM default; also the max_position_embeddings of our HF export


# ----------------------------------------------------------------------------------------------
# Log-likelihood scoring (lm-eval's HFLM.loglikelihood on the mesh)


def _encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """A batch encoder without special tokens, for a `tokenizers.Tokenizer` or a transformers tokenizer."""
    if hasattr(tokenizer, "encode_batch"):
        return lambda texts: [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    return lambda texts: [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _prefix_token(tokenizer) -> int:
    """lm-eval scores a continuation after an empty context from the end-of-text token."""
    vocab = tokenizer.get_vocab()
    return int(vocab.get("<|endoftext|>", 0))


def encode_requests(tokenizer, requests: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context tokens, continuation tokens) per request, as lm-eval's HFLM._encode_pair."""
    pairs = []
    for context, continuation in requests:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        pairs.append((context, continuation))
    texts = sorted({c for c, _ in pairs if c} | {c + x for c, x in pairs if c} | {x for c, x in pairs if not c})
    encode = _encoder(tokenizer)
    ids = {}
    for i in range(0, len(texts), 4096):
        chunk = texts[i:i + 4096]
        ids.update(zip(chunk, encode(chunk)))
    out = []
    for context, continuation in pairs:
        if not context:
            out.append(([_prefix_token(tokenizer)], ids[continuation]))
        else:
            ctx = ids[context]
            out.append((ctx, ids[context + continuation][len(ctx):]))
    return out


_BUCKETS = (32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def length_bucket(n: int) -> int:
    for b in _BUCKETS:
        if n <= b:
            return b
    return -(-n // 512) * 512


@dataclasses.dataclass
class Row:
    inputs: tuple[int, ...]
    requests: list[tuple[int, list[int], int]]  # (request index, targets (len(inputs)), continuation length)


def request_rows(encoded: list[tuple[list[int], list[int]]], max_length: int) -> list[Row]:
    """Requests with identical inputs share a row (e.g. MMLU's A/B/C/D after one context)."""
    rows: dict[tuple[int, ...], Row] = {}
    for r, (ctx, cont) in enumerate(encoded):
        full = (ctx + cont)[-(max_length + 1):]
        inputs = tuple(full[:-1])
        row = rows.setdefault(inputs, Row(inputs, []))
        row.requests.append((r, full[1:], min(len(cont), len(inputs))))
    return sorted(rows.values(), key=lambda row: -len(row.inputs))
