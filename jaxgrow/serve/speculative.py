"""Speculative sampling across family members (Leviathan et al. 2023; Chen et al. 2023), and draft
acceptance as a family-consistency measure.

One prompt per call (vmapped for batches of prompts): the draft proposes gamma tokens d_1..d_gamma
autoregressively from q; the target scores [last, d_1..d_gamma] in ONE forward, giving
p_1..p_{gamma+1}; d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection
one token is drawn from norm(max(0, p_i - q_i)); if all gamma are accepted a bonus token is drawn from
p_{gamma+1}. Both p and q are the *warped* distributions (temperature, top-k, top-p), so the output is
distributed exactly as the target's warped sampling. At temperature 0, p and q are one-hot at their
argmax: d_i is accepted iff it is the target's argmax, and the correction is the target's argmax, so
the output is the target's greedy output. Rejected tokens need no cache rollback: their slots are
simply overwritten later, and the causal mask (slot <= query slot) never reads past the cursor.

Counting: acceptance rate = accepted draft tokens / proposed draft tokens; tokens per target call =
new tokens / target forward calls after the prefill (target-alone decoding makes 1 per token)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrow.config import InputError
from jaxgrow.model import layout
from jaxgrow.serve import decode


DEFAULT_GAMMA = 4


# ----------------------------------------------------------------------------------------------
# Speculative decoding


def check_draft(target_cfg: Any, draft_cfg: Any, target: str = "--member", draft: str = "--draft") -> None:
    """Refuses a draft that cannot serve this target: another vocabulary, or a larger model."""
    if int(draft_cfg.vocab_size) != int(target_cfg.vocab_size):
        raise InputError(f"{draft}: vocab_size {draft_cfg.vocab_size} differs from {target}'s {target_cfg.vocab_size}; "
                         "the draft must share the target's tokenizer")
    nd, nt = layout.param_count(draft_cfg), layout.param_count(target_cfg)
    if nd > nt:
        raise InputError(f"{draft}: has {nd:,} parameters, more than {target}'s {nt:,}; the draft must be the "
                         "smaller model")


def check_gamma(gamma: int) -> None:
    if gamma < 1:
        raise InputError(f"--gamma={gamma} must be >= 1 (draft tokens proposed per target call)")


def _speculative_one(target_params, draft_params, cfg_t, cfg_d, tokens, pad, n_new, eos_id, key, temperature,
                     gamma: int, top_k: int, top_p: float, out_len: int):
    """One prompt: tokens [P] left-padded by pad. Returns (out [out_len + gamma + 1], n generated,
    accepted, proposed, target calls)."""
    P = tokens.shape[0]
    cache_len = P + out_len + gamma + 1
    pad1 = pad[None]
    cache_t = decode.forward(target_params, cfg_t, tokens[None, :-1], decode.init_cache(cfg_t, 1, cache_len), jnp.int32(0), pad1)[1]
    cache_d = decode.forward(draft_params, cfg_d, tokens[None, :-1], decode.init_cache(cfg_d, 1, cache_len), jnp.int32(0), pad1)[1]
    seq = jnp.zeros(cache_len, jnp.int32).at[:P].set(tokens)
    greedy = temperature == 0

    def cond(state):
        n, _, _, _, done, *_ = state
        return (n - P < n_new) & ~done

    def body(state):
        n, seq, cache_t, cache_d, done, accepted, proposed, calls = state
        round_key = jax.random.fold_in(key, n)
        draft_key, accept_key, extra_key = jax.random.split(round_key, 3)
        last = jax.lax.dynamic_index_in_dim(seq, n - 1, keepdims=False)

        def draft_step(j, carry):
            cache_d, tok, drafts, q_logits = carry
            logits, cache_d = decode.forward(draft_params, cfg_d, tok[None, None], cache_d, n - 1 + j, pad1)
            q = decode.warp(logits[0, 0], temperature, top_k, top_p)
            nxt = decode.select(logits[0, 0], jax.random.fold_in(draft_key, j), temperature, top_k, top_p)
            return cache_d, nxt, drafts.at[j].set(nxt), q_logits.at[j].set(jnp.where(greedy, logits[0, 0], q))

        V = cfg_t.vocab_size
        cache_d, last_draft, drafts, q_logits = jax.lax.fori_loop(
            0, gamma, draft_step, (cache_d, last, jnp.zeros(gamma, jnp.int32), jnp.zeros((gamma, V), jnp.float32)))
        # d_gamma's keys/values, so the draft's cache is complete when every draft is accepted
        cache_d = decode.forward(draft_params, cfg_d, last_draft[None, None], cache_d, n - 1 + gamma, pad1)[1]

        chunk = jnp.concatenate([last[None], drafts])
        t_logits, cache_t = decode.forward(target_params, cfg_t, chunk[None], cache_t, n - 1, pad1)
        t_logits = t_logits[0]                                               # [gamma+1, V]
        p_logits = decode.warp(t_logits, temperature, top_k, top_p)
        p = jax.nn.softmax(p_logits, axis=-1)
        q = jax.nn.softmax(q_logits, axis=-1)
        idx = jnp.arange(gamma)
        p_d, q_d = p[idx, drafts], q[idx, drafts]
        u = jax.random.uniform(accept_key, (gamma,))
        ok = jnp.where(greedy, drafts == jnp.argmax(t_logits[:gamma], axis=-1), u * q_d < p_d)
        k = jnp.sum(jnp.cumprod(ok.astype(jnp.int32)))                      # leading accepted drafts
        p_k = p[k]
        q_k = jnp.where(k < gamma, q[jnp.minimum(k, gamma - 1)], 0.0)
        residual = jnp.maximum(p_k - q_k, 0.0)
        residual = jnp.where(jnp.sum(residual) > 0, residual, p_k)            # float safety only
        sampled = jax.random.categorical(extra_key, jnp.log(residual)).astype(jnp.int32)
        extra = jnp.where(greedy, jnp.argmax(t_logits[k]).astype(jnp.int32), sampled)

        new = jnp.where(idx < k, drafts, 0)
        new = jnp.concatenate([new, jnp.zeros(1, jnp.int32)]).at[k].set(extra)   # [gamma+1]: d_1..d_k, extra
        seq = jax.lax.dynamic_update_slice(seq, new, (n,))
        done = jnp.any((jnp.arange(gamma + 1) <= k) & (new == eos_id))
        return n + k + 1, seq, cache_t, cache_d, done, accepted + k, proposed + gamma, calls + 1

    zero = jnp.int32(0)
    n, seq, *_, accepted, proposed, calls = jax.lax.while_loop(
        cond, body, (jnp.int32(P), seq, cache_t, cache_d, jnp.bool_(False), zero, zero, zero))
    return seq[P:], n - P, accepted, proposed, calls


@functools.partial(jax.jit, static_argnames=("cfg_t", "cfg_d", "gamma", "top_k", "top_p", "out_len"))
def _speculative(target_params, draft_params, cfg_t, cfg_d, tokens, pad, n_new, eos_id, keys, temperature,
                 gamma: int, top_k: int, top_p: float, out_len: int):
    """Batched over prompts by vmap (rows advance independently; the loop runs until all are done).
    One prompt runs unbatched: vmap turns the cache writes into scatters and selects the whole loop
    state every round, which made batch-1 decoding ~1.7x slower on CPU."""
    fn = functools.partial(_speculative_one, target_params, draft_params, cfg_t, cfg_d, gamma=gamma, top_k=top_k,
                           top_p=top_p, out_len=out_len)
    if tokens.shape[0] == 1:
        return jax.tree.map(lambda x: x[None], fn(tokens[0], pad[0], n_new, eos_id, keys[0], temperature))
    return jax.vmap(fn, in_axes=(0, 0, None, None, 0, None))(tokens, pad, n_new, eos_id, keys, temperature)


@dataclasses.dataclass
class SpeculativeResult:
    tokens: list[list[int]]        # new tokens per prompt (up to and including eos)
    accepted: int                  # draft tokens accepted
    proposed: int                  # draft tokens proposed
    target_calls: int              # target forwards after the prefill
    generated: int                 # new tokens before truncation to max_new_tokens / eos

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def tokens_per_target_call(self) -> float:
        return self.generated / self.target_calls if self.target_calls else float("nan")


def speculative_batch(target_params: dict, target_cfg: Any, draft_params: dict, draft_cfg: Any,
                      prompts: Sequence[Sequence[int]], max_new_tokens: int, gamma: int = DEFAULT_GAMMA,
                      temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                      eos_id: int | None = None) -> SpeculativeResult:
    """Speculative decoding of each prompt: `draft` proposes, `target` verifies (module docstring)."""
    decode.check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    check_gamma(gamma)
    check_draft(target_cfg, draft_cfg)
    for i, p in enumerate(prompts):
        for cfg in (target_cfg, draft_cfg):  # both models must hold prompt + new tokens + one round of drafts
            decode.check_prompt(p, cfg, max_new_tokens + gamma + 1, f"prompts[{i}]" if len(prompts) > 1 else "--prompt")
    if max_new_tokens == 0 or not prompts:
        return SpeculativeResult([[] for _ in prompts], 0, 0, 0, 0)
    tokens, pad = decode.left_pad(prompts)
    out_len = decode.round_up(tokens.shape[1] + max_new_tokens, decode.CACHE_BUCKET) - tokens.shape[1]
    keys = jax.random.split(jax.random.key(seed), len(prompts))
    out, n, accepted, proposed, calls = _speculative(
        target_params, draft_params, decode.frozen_config(target_cfg), decode.frozen_config(draft_cfg), jnp.asarray(tokens), jnp.asarray(pad),
        jnp.int32(max_new_tokens), jnp.int32(-1 if eos_id is None else eos_id), keys, jnp.float32(temperature),
        gamma=int(gamma), top_k=int(top_k), top_p=float(top_p), out_len=int(out_len))
    out, n, accepted, proposed, calls = jax.device_get((out, n, accepted, proposed, calls))
    rows = []
    for row, m in zip(out, n):
        row = [int(t) for t in row[:min(int(m), max_new_tokens)]]
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id) + 1]
        rows.append(row)
    return SpeculativeResult(rows, int(accepted.sum()), int(proposed.sum()), int(calls.sum()), int(n.sum()))


def speculative_generate(target_params: dict, target_cfg: Any, draft_params: dict, draft_cfg: Any,
                         prompt_ids: Sequence[int], max_new_tokens: int, gamma: int = DEFAULT_GAMMA,
                         temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                         eos_id: int | None = None) -> SpeculativeResult:
    """One prompt; result.tokens[0] is its continuation."""
    return speculative_batch(target_params, target_cfg, draft_params, draft_cfg, [list(prompt_ids)], max_new_tokens,
                             gamma, temperature, top_k, top_p, seed, eos_id)


# ----------------------------------------------------------------------------------------------
# Acceptance rate as a family consistency measure

ACCEPTANCE_TEMPERATURES = (0.0, 1.0)


def held_out_prompts(batches: Sequence[Any], n_prompts: int, prompt_len: int) -> list[list[int]]:
    """The first `prompt_len` tokens of the first `n_prompts` held-out rows."""
    rows = []
    for b in batches:
        for row in np.asarray(jax.device_get(b)):
            rows.append([int(t) for t in row[:prompt_len]])
            if len(rows) == n_prompts:
                return rows
    return rows


def draft_acceptance(draft_params: dict, draft_cfg: Any, target_params: dict, target_cfg: Any,
                     prompts: Sequence[Sequence[int]], max_new_tokens: int = 32, gamma: int = DEFAULT_GAMMA,
                     temperatures: Sequence[float] = ACCEPTANCE_TEMPERATURES, seed: int = 0) -> dict:
    """Acceptance rate of `draft` proposing for `target` on `prompts`, per temperature:
    {'temperature_0': rate, 'temperature_1': rate, 'gamma', 'prompts', 'new_tokens'}. No eos stop,
    so every prompt contributes the same number of tokens."""
    out: dict = {}
    for t in temperatures:
        r = speculative_batch(target_params, target_cfg, draft_params, draft_cfg, prompts, max_new_tokens, gamma,
                              temperature=t, seed=seed)
        out[f"temperature_{t:g}"] = r.acceptance_rate
        out[f"tokens_per_target_call_temperature_{t:g}"] = r.tokens_per_target_call
    out.update(gamma=int(gamma), prompts=len(prompts), new_tokens=int(max_new_tokens))
    return out


ACCEPTANCE_PROMPTS = 8       # held-out prompts per adjacent pair
ACCEPTANCE_PROMPT_LEN = 32   # tokens of held-out text per prompt
ACCEPTANCE_NEW_TOKENS = 32   # tokens generated per prompt


def family_acceptance(params: Sequence[dict], model_cfgs: Sequence[Any], batches: Sequence[Any],
                      gamma: int = DEFAULT_GAMMA) -> list[dict | None]:
    """Per member i: member i drafting for member i+1 on held-out prompts (None for the last, for a member larger
    than the next, or when the held-out batches are not addressable from this process)."""
    if not batches or not all(getattr(b, "is_fully_addressable", True) for b in batches):
        return [None] * len(params)
    prompts = held_out_prompts(batches, ACCEPTANCE_PROMPTS, ACCEPTANCE_PROMPT_LEN)
    out: list[dict | None] = []
    for i in range(len(params)):
        if i + 1 == len(params) or layout.param_count(model_cfgs[i]) > layout.param_count(model_cfgs[i + 1]):
            out.append(None)  # the last member drafts for nobody; a larger model is no draft
            continue
        out.append(draft_acceptance(params[i], model_cfgs[i], params[i + 1], model_cfgs[i + 1], prompts,
                                    ACCEPTANCE_NEW_TOKENS, gamma))
    return out
