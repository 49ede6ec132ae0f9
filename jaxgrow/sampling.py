"""Sampling from family members: jitted decoding of one model and the `sample` command.

`generate` decodes inside one jitted while_loop over a fixed-size token buffer (the prompt plus
max_new_tokens, rounded up to a multiple of 64), recomputing the causal forward each step: padding
after the cursor cannot influence it, and nothing recompiles per token. No KV cache: correctness
over speed, for small models (jaxgrow.inference adds the cache and speculative decoding).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from jaxgrow import config as config_lib, model, sharding, workdir as workdir_lib
from jaxgrow.config import InputError
from jaxgrow.data import EOS


def _select_next(logits, key, temperature, greedy: bool, top_k: int):
    """logits [V] float32 -> next token id (int32)."""
    if greedy:
        return jnp.argmax(logits).astype(jnp.int32)
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][-1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits / temperature).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model_cfg", "greedy", "top_k"))
def _decode(params, model_cfg, buf, start, n_new, eos_id, key, temperature, greedy: bool, top_k: int):
    """Fills buf[start : start + n_new] one token at a time, re-running the causal forward over the
    whole fixed-size buffer each step (tokens after the cursor cannot influence it). Stops early at
    eos_id (>= 0). Returns (buf, number of tokens generated). Compiles once per (config, buffer
    length, greedy, top_k)."""

    def cond(state):
        i, _, done = state
        return (i < n_new) & ~done

    def body(state):
        i, buf, _ = state
        pos = start + i
        row = model.logits(params, model_cfg, buf[None])[0]
        last = jax.lax.dynamic_index_in_dim(row, pos - 1, axis=0, keepdims=False)
        tok = _select_next(last, jax.random.fold_in(key, i), temperature, greedy, top_k)
        buf = jax.lax.dynamic_update_index_in_dim(buf, tok, pos, axis=0)
        return i + 1, buf, tok == eos_id

    n, buf, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), buf, jnp.bool_(False)))
    return buf, n


def _bucket(n: int) -> int:
    """Buffer length: the next multiple of 64, so similar prompts share one compilation."""
    return max(64, -(-n // 64) * 64)


def generate(params: dict, model_cfg: Any, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, seed: int = 0, eos_id: int | None = None) -> list[int]:
    """New token ids continuing `prompt_ids` (non-empty): greedy at temperature 0, else sampled
    from softmax(logits / temperature) restricted to the top_k tokens (0 = all). Stops after
    max_new_tokens or right after emitting eos_id (included) when given."""
    _check_sampling_args(max_new_tokens, temperature, top_k)
    if not prompt_ids:
        raise InputError("generate: prompt_ids is empty (give at least one token, e.g. the <|endoftext|> id)")
    if max_new_tokens == 0:
        return []
    buf = np.zeros(_bucket(len(prompt_ids) + max_new_tokens), np.int32)
    buf[:len(prompt_ids)] = prompt_ids
    frozen = config_lib.frozen(model_cfg)
    out, n = _decode(params, frozen, jnp.asarray(buf), jnp.int32(len(prompt_ids)), jnp.int32(max_new_tokens),
                     jnp.int32(-1 if eos_id is None else eos_id), jax.random.key(seed),
                     jnp.float32(max(temperature, 1e-6)), greedy=temperature == 0, top_k=int(top_k))
    out, n = jax.device_get((out, n))
    return [int(t) for t in out[len(prompt_ids): len(prompt_ids) + int(n)]]


def _check_sampling_args(max_new_tokens: int, temperature: float, top_k: int) -> None:
    if max_new_tokens < 0:
        raise InputError(f"--max_new_tokens={max_new_tokens} must be >= 0")
    if not temperature >= 0:
        raise InputError(f"--temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k < 0:
        raise InputError(f"--top_k={top_k} must be >= 0 (0 = all tokens)")


def _continuation_text(tok, prompt_ids: list[int], new_ids: list[int]) -> str:
    """Decoded continuation; decodes prompt + continuation together so byte-level tokens that
    split a UTF-8 character across the boundary still decode correctly."""
    prompt_text = tok.decode(prompt_ids, skip_special_tokens=False)
    full = tok.decode(prompt_ids + new_ids, skip_special_tokens=False)
    return full[len(prompt_text):] if full.startswith(prompt_text) else tok.decode(new_ids, skip_special_tokens=False)


def sample_workdir(workdir: Path, member: str | None, prompt: str, max_new_tokens: int, temperature: float,
                   top_k: int, seed: int) -> dict[str, str]:
    """Continuation text of `prompt` per member (member=None: every finished member), decoded with
    the run's tokenizer; stops at max_new_tokens or <|endoftext|> (not included). An empty prompt
    starts from <|endoftext|>, the document separator the models were trained with."""
    _check_sampling_args(max_new_tokens, temperature, top_k)
    _, stages = workdir_lib.select_members(workdir, member)
    tok_path = Path(workdir, "tokenizer.json")
    if not tok_path.is_file():
        raise InputError(f"--workdir={workdir} has no tokenizer.json; cannot encode --prompt")
    tok = Tokenizer.from_file(str(tok_path))
    eos_id = tok.token_to_id(EOS)
    prompt_ids = tok.encode(prompt, add_special_tokens=False).ids if prompt else []
    if not prompt_ids:
        if eos_id is None:
            raise InputError(f"--prompt is empty and {tok_path} has no {EOS} token to start from")
        prompt_ids = [eos_id]
    mesh = sharding.eval_mesh(jax.devices()[:1])  # tiny models and no batch to split: one device
    results = {}
    for stage in stages:
        params = workdir_lib.member_params(workdir, stage, mesh)
        new = generate(params, stage.model, prompt_ids, max_new_tokens, temperature, top_k, seed, eos_id)
        if new and new[-1] == eos_id:
            new = new[:-1]
        results[stage.name] = _continuation_text(tok, prompt_ids, new)
    return results
