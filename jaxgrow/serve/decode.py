"""Prefill + KV-cache decoding and sampling for one model (speculative decoding: serve/speculative.py).

Library API:
    generate(params, model_cfg, prompt_ids, max_new_tokens, temperature=0, top_k=0, top_p=1, seed=0, eos_id=None)
        -> new token ids of one prompt (list[int])
    generate_batch(params, model_cfg, prompts, ...) -> new token ids per prompt (prompts of different lengths)
    full_recompute_generate(...)   the O(n^2) decoder (no cache) that KV-cache decoding must reproduce

Cache and positions. The KV cache is `[layers, batch, kv_heads, max_len, head_dim]` per K and V, in the
compute dtype, written with `dynamic_update_slice` and carried through the `lax.scan` over the stacked
layers (the scan carry holds the whole cache; each layer updates its own slice in place). Prompts of
different lengths are LEFT-padded to a common length P (rounded up to a multiple of 16 so similar
prompts share one compilation): row b's token in cache slot s sits at position s - pad_b, and a query
in slot t attends exactly the slots pad_b <= s <= t. Every row therefore writes the same slot at each
decode step (one `dynamic_update_slice`), and padding can never influence a real token.

The math is model/decoder.py's (rms_norm, apply_rope, dense, the layout), applied per step on the parameter
dict directly; tests check the cached forward against `decoder.logits` and greedy decoding against the
full-recompute decoder token for token (tied, untied, GQA, MQA).

Sampling. temperature 0 is greedy (argmax of the raw logits); otherwise logits / temperature,
restricted to the top_k most likely tokens (0 = all), then to the smallest set whose probability
reaches top_p (nucleus; 1 = all). Decoding stops after max_new_tokens or right after eos_id.

Speculative sampling across members is in serve/speculative.py.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgrow import config as config_lib
from jaxgrow.config import InputError
from jaxgrow.model import decoder


PROMPT_BUCKET = 16     # prompts are left-padded to a multiple of this
CACHE_BUCKET = 64      # cache length: a multiple of this


class KVCache(NamedTuple):
    k: jax.Array  # [layers, batch, kv_heads, max_len, head_dim]
    v: jax.Array


def frozen_config(cfg: Any) -> ml_collections.FrozenConfigDict:
    return cfg if isinstance(cfg, ml_collections.FrozenConfigDict) else ml_collections.FrozenConfigDict(cfg)


def round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


rope_context = config_lib.rope_context  # the model's RoPE-usable context (a fact of the config)


def init_cache(model_cfg: Any, batch: int, max_len: int) -> KVCache:
    shape = (model_cfg.num_layers, batch, model_cfg.num_kv_heads, max_len, model_cfg.head_dim)
    return KVCache(jnp.zeros(shape, model_cfg.dtype), jnp.zeros(shape, model_cfg.dtype))


# ----------------------------------------------------------------------------------------------
# The cached forward


def _rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """model.apply_rope with per-row positions: x [B,T,N,d], cos/sin [B,T,d]."""
    return jax.vmap(lambda xb, cb, sb: decoder.apply_rope(xb[None], cb, sb)[0])(x, cos, sin)


def _cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """GQA over the cache. q [B,T,H,d]; k, v [B,K,S,d]; mask [B,T,S] (True = attend) -> [B,T,H,d]."""
    B, T, H, d = q.shape
    K = k.shape[1]
    qg = q.reshape(B, T, K, H // K, d)
    scores = jnp.einsum("btkgd,bksd->bkgts", qg, k, preferred_element_type=jnp.float32) / np.sqrt(d)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bksd->btkgd", probs, v).reshape(B, T, H, d)


def forward(params: dict, cfg: Any, tokens: jax.Array, cache: KVCache, start: jax.Array,
            pad: jax.Array) -> tuple[jax.Array, KVCache]:
    """Runs `tokens` [B,T] in cache slots start..start+T-1 (row b's positions: slot - pad[b]).

    Writes their keys/values into the cache and returns (logits [B,T,V] float32, cache). Slots
    below pad[b] (left padding) and above each query's slot are masked out.
    """
    dtype = jnp.dtype(cfg.dtype)
    B, T = tokens.shape
    S = cache.k.shape[3]
    slots = start + jnp.arange(T, dtype=jnp.int32)                      # [T]
    positions = jnp.maximum(slots[None, :] - pad[:, None], 0)           # [B,T]
    cos_table, sin_table = decoder.rope_tables(S, cfg.head_dim, cfg.rope_theta)
    cos, sin = cos_table[positions], sin_table[positions]               # [B,T,d]
    keys = jnp.arange(S, dtype=jnp.int32)
    mask = (keys[None, None, :] <= slots[None, :, None]) & (keys[None, None, :] >= pad[:, None, None])

    x = jnp.take(params["embed"]["embedding"], tokens, axis=0).astype(dtype)

    def layer(carry, xs):
        x, ck, cv = carry
        p, i = xs
        attn, mlp = p["attn"], p["mlp"]
        h = decoder.rms_norm(x, p["attn_norm"]["scale"], cfg.norm_eps)
        q = _rope(decoder.dense(h, attn["q_proj"].astype(h.dtype)), cos, sin)
        k = _rope(decoder.dense(h, attn["k_proj"].astype(h.dtype)), cos, sin)
        v = decoder.dense(h, attn["v_proj"].astype(h.dtype))
        zero = jnp.int32(0)
        ck = jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 1, 3)[None].astype(ck.dtype), (i, zero, zero, start, zero))
        cv = jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3)[None].astype(cv.dtype), (i, zero, zero, start, zero))
        o = _cached_attention(q, ck[i], cv[i], mask)
        x = x + decoder.dense(o, attn["o_proj"].astype(o.dtype), 2)
        h = decoder.rms_norm(x, p["mlp_norm"]["scale"], cfg.norm_eps)
        act = jax.nn.silu(decoder.dense(h, mlp["gate_proj"].astype(h.dtype))) * decoder.dense(h, mlp["up_proj"].astype(h.dtype))
        x = x + decoder.dense(act, mlp["down_proj"].astype(act.dtype))
        return (x, ck, cv), None

    layers = {k: params["layers"][k] for k in ("attn_norm", "attn", "mlp_norm", "mlp")}
    (x, ck, cv), _ = jax.lax.scan(layer, (x, cache.k, cache.v),
                                  (layers, jnp.arange(cfg.num_layers, dtype=jnp.int32)))
    x = decoder.rms_norm(x, params["final_norm"]["scale"], cfg.norm_eps)
    head = params["embed"]["embedding"].T if cfg.tie_embeddings else params["lm_head"]["kernel"]
    return decoder.dense(x, head.astype(dtype), 1, jnp.float32), KVCache(ck, cv)


# ----------------------------------------------------------------------------------------------
# Sampling


def warp(logits: jax.Array, temperature: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Logits of the sampling distribution: / temperature, then top-k, then top-p (masked = -inf)."""
    logits = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs            # probability of the tokens ranked above
        keep = before < top_p                                  # the first token is always kept
        cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def select(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """logits [..., V] -> token ids [...] (int32): argmax at temperature 0, else a sample."""
    sampled = jax.random.categorical(key, warp(logits, temperature, top_k, top_p), axis=-1)
    return jnp.where(temperature == 0, jnp.argmax(logits, axis=-1), sampled).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Plain (KV-cache) decoding


@functools.partial(jax.jit, static_argnames=("cfg", "top_k", "top_p", "out_len"))
def _decode(params, cfg, tokens, pad, n_new, eos_id, key, temperature, top_k: int, top_p: float, out_len: int):
    """Prefill tokens [B,P] (left-padded by pad[B]), then decode up to n_new (<= out_len) tokens per
    row with the cache. Returns (out [B,out_len], lengths [B]: tokens up to and including eos)."""
    B, P = tokens.shape
    cache = init_cache(cfg, B, P + out_len)
    logits, cache = forward(params, cfg, tokens, cache, jnp.int32(0), pad)
    tok = select(logits[:, -1], jax.random.fold_in(key, 0), temperature, top_k, top_p)

    def cond(state):
        i, _, _, _, done, _ = state
        return (i < n_new) & ~jnp.all(done)

    def body(state):
        i, out, tok, cache, done, lengths = state
        out = jax.lax.dynamic_update_index_in_dim(out, tok, i, axis=1)
        lengths = jnp.where(done, lengths, i + 1)
        done = done | (tok == eos_id)
        logits, cache = forward(params, cfg, tok[:, None], cache, P + i, pad)
        nxt = select(logits[:, 0], jax.random.fold_in(key, i + 1), temperature, top_k, top_p)
        return i + 1, out, nxt, cache, done, lengths

    init = (jnp.int32(0), jnp.zeros((B, out_len), jnp.int32), tok, cache, jnp.zeros(B, bool), jnp.zeros(B, jnp.int32))
    _, out, _, _, _, lengths = jax.lax.while_loop(cond, body, init)
    return out, lengths


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int, top_p: float = 1.0) -> None:
    if max_new_tokens < 0:
        raise InputError(f"--max_new_tokens={max_new_tokens} must be >= 0")
    if not temperature >= 0:
        raise InputError(f"--temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k < 0:
        raise InputError(f"--top_k={top_k} must be >= 0 (0 = all tokens)")
    if not 0 < top_p <= 1:
        raise InputError(f"--top_p={top_p} must be in (0, 1] (1 = all tokens)")


def check_prompt(prompt_ids: Sequence[int], model_cfg: Any, max_new_tokens: int = 0, what: str = "--prompt") -> None:
    if not len(prompt_ids):
        raise InputError(f"{what} is empty (give at least one token, e.g. the <|endoftext|> id)")
    context = rope_context(model_cfg)
    if len(prompt_ids) > context:
        raise InputError(f"{what} has {len(prompt_ids)} tokens, longer than the model's context of {context} "
                         "(its RoPE-usable length); shorten it")
    if len(prompt_ids) + max_new_tokens > context:
        raise InputError(f"--max_new_tokens={max_new_tokens}: prompt ({len(prompt_ids)} tokens) + new tokens exceed "
                         f"the model's context of {context}; at most {context - len(prompt_ids)} new tokens")
    bad = [t for t in prompt_ids if not 0 <= int(t) < model_cfg.vocab_size]
    if bad:
        raise InputError(f"{what}: token id {bad[0]} is outside the vocabulary [0, {model_cfg.vocab_size})")


def left_pad(prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    P = round_up(max(len(p) for p in prompts), PROMPT_BUCKET)
    tokens = np.zeros((len(prompts), P), np.int32)
    pad = np.zeros(len(prompts), np.int32)
    for b, p in enumerate(prompts):
        pad[b] = P - len(p)
        tokens[b, pad[b]:] = p
    return tokens, pad


def generate_batch(params: dict, model_cfg: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                   eos_id: int | None = None) -> list[list[int]]:
    """New token ids continuing each prompt (prompts may differ in length), KV-cache decoding.
    Each row stops after max_new_tokens or right after emitting eos_id (included)."""
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    if not prompts:
        return []
    for i, p in enumerate(prompts):
        check_prompt(p, model_cfg, max_new_tokens, f"prompts[{i}]" if len(prompts) > 1 else "--prompt")
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    tokens, pad = left_pad(prompts)
    out_len = round_up(tokens.shape[1] + max_new_tokens, CACHE_BUCKET) - tokens.shape[1]
    out, lengths = _decode(params, frozen_config(model_cfg), jnp.asarray(tokens), jnp.asarray(pad),
                           jnp.int32(max_new_tokens), jnp.int32(-1 if eos_id is None else eos_id),
                           jax.random.key(seed), jnp.float32(temperature), top_k=int(top_k), top_p=float(top_p),
                           out_len=int(out_len))
    out, lengths = jax.device_get((out, lengths))
    return [[int(t) for t in row[:n]] for row, n in zip(out, lengths)]


def generate(params: dict, model_cfg: Any, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, seed: int = 0, eos_id: int | None = None, top_p: float = 1.0) -> list[int]:
    """New token ids continuing `prompt_ids` (non-empty): greedy at temperature 0, else sampled from
    softmax(logits / temperature) restricted to the top_k tokens (0 = all) and the top_p nucleus (1 = all).
    Stops after max_new_tokens or right after emitting eos_id (included) when given (see generate_batch).
    Signature-compatible with the former hf.generate (top_p added last)."""
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    if not prompt_ids:
        raise InputError("generate: prompt_ids is empty (give at least one token, e.g. the <|endoftext|> id)")
    check_prompt(prompt_ids, model_cfg, max_new_tokens)
    return generate_batch(params, model_cfg, [list(prompt_ids)], max_new_tokens, temperature, top_k, top_p, seed,
                          eos_id)[0]


# ----------------------------------------------------------------------------------------------
# Full-recompute decoding: the reference KV-cache decoding must reproduce, and the benchmark baseline


@functools.partial(jax.jit, static_argnames=("cfg",))
def _full_recompute(params, cfg, buf, start, n_new, eos_id):
    """Greedy; fills buf[start:start+n_new] re-running the whole causal forward every step."""

    def cond(state):
        i, _, done = state
        return (i < n_new) & ~done

    def body(state):
        i, buf, _ = state
        row = decoder.logits(params, cfg, buf[None])[0]
        tok = jnp.argmax(jax.lax.dynamic_index_in_dim(row, start + i - 1, axis=0, keepdims=False)).astype(jnp.int32)
        return i + 1, jax.lax.dynamic_update_index_in_dim(buf, tok, start + i, axis=0), tok == eos_id

    n, buf, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), buf, jnp.bool_(False)))
    return buf, n


def full_recompute_generate(params: dict, model_cfg: Any, prompt_ids: Sequence[int], max_new_tokens: int,
                            eos_id: int | None = None) -> list[int]:
    """Greedy continuation with no cache: O(n^2) work, the decoder `sample` used before the cache."""
    check_prompt(prompt_ids, model_cfg, max_new_tokens)
    buf = np.zeros(round_up(len(prompt_ids) + max_new_tokens, CACHE_BUCKET), np.int32)
    buf[:len(prompt_ids)] = prompt_ids
    out, n = _full_recompute(params, frozen_config(model_cfg), jnp.asarray(buf), jnp.int32(len(prompt_ids)),
                             jnp.int32(max_new_tokens), jnp.int32(-1 if eos_id is None else eos_id))
    out, n = jax.device_get((out, n))
    return [int(t) for t in out[len(prompt_ids):len(prompt_ids) + int(n)]]


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """(result, seconds) of the second of two calls: the first compiles."""
    fn(*args, **kwargs)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
