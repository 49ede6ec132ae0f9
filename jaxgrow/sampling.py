"""Sampling from family members: the `sample` command (plain or speculative) and
`evaluate --speculative`, over jaxgrow.inference (prefill + KV cache, speculative decoding).

`_decode` is the former decoder, kept as the reference the KV cache must reproduce: one jitted
while_loop over a fixed-size token buffer (the prompt plus max_new_tokens, rounded up to a
multiple of 64), recomputing the causal forward each step.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from tokenizers import Tokenizer

from jaxgrow import checkpoint, data, inference, model, sharding, storage, workdir as workdir_lib
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
             top_k: int = 0, seed: int = 0, eos_id: int | None = None, top_p: float = 1.0) -> list[int]:
    """New token ids continuing `prompt_ids` (non-empty): greedy at temperature 0, else sampled
    from softmax(logits / temperature) restricted to the top_k tokens (0 = all) and the top_p
    nucleus (1 = all). Stops after max_new_tokens or right after emitting eos_id (included) when
    given. Prefill + KV-cache decoding (jaxgrow.inference); `_decode` above is the former
    full-recompute decoder, kept as the reference the cache must reproduce."""
    inference.check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    if not prompt_ids:
        raise InputError("generate: prompt_ids is empty (give at least one token, e.g. the <|endoftext|> id)")
    return inference.generate(params, model_cfg, prompt_ids, max_new_tokens, temperature, top_k, seed, eos_id, top_p)


def _continuation_text(tok, prompt_ids: list[int], new_ids: list[int]) -> str:
    """Decoded continuation; decodes prompt + continuation together so byte-level tokens that
    split a UTF-8 character across the boundary still decode correctly."""
    prompt_text = tok.decode(prompt_ids, skip_special_tokens=False)
    full = tok.decode(prompt_ids + new_ids, skip_special_tokens=False)
    return full[len(prompt_text):] if full.startswith(prompt_text) else tok.decode(new_ids, skip_special_tokens=False)


def sample_workdir(workdir: Path, member: str | None, prompt: str, max_new_tokens: int, temperature: float,
                   top_k: int, seed: int, top_p: float = 1.0) -> dict[str, str]:
    """Continuation text of `prompt` per member (member=None: every finished member), decoded with
    the run's tokenizer; stops at max_new_tokens or <|endoftext|> (not included). An empty prompt
    starts from <|endoftext|>, the document separator the models were trained with."""
    inference.check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    _, stages = workdir_lib.select_members(workdir, member)
    tok = _tokenizer(workdir, "--workdir")
    eos_id, prompt_ids = _prompt_ids(tok, prompt)
    mesh = sharding.eval_mesh(jax.devices()[:1])  # tiny models and no batch to split: one device
    results = {}
    for stage in stages:
        params = workdir_lib.member_params(workdir, stage, mesh)
        new = generate(params, stage.model, prompt_ids, max_new_tokens, temperature, top_k, seed, eos_id, top_p)
        if new and new[-1] == eos_id:
            new = new[:-1]
        results[stage.name] = _continuation_text(tok, prompt_ids, new)
    return results


# ----------------------------------------------------------------------------------------------
# Speculative sampling and acceptance for a workdir (called by jaxgrow.main)


def _member_stage(workdir, name: str, flag: str):
    _, stages = workdir_lib.load_setup_for_eval(workdir)
    by_name = {s.name: s for s in stages}
    if name not in by_name:
        raise InputError(f"{flag}={name} is not a member of {workdir}; members: {', '.join(by_name)}")
    if not checkpoint.has_checkpoint(workdir_lib.member_dir(workdir, name)):
        raise InputError(f"{flag}={name}: {workdir_lib.member_dir(workdir, name)} holds no checkpoint; train first")
    return by_name[name]


def _tokenizer(workdir, flag: str):
    path = storage.join(workdir, "tokenizer.json")
    if not path.is_file():
        raise InputError(f"{flag}={workdir} has no tokenizer.json; cannot encode --prompt")
    return Tokenizer.from_str(path.read_text())  # local or remote


def _prompt_ids(tok, prompt: str) -> tuple[int | None, list[int]]:
    """(EOS id, the prompt's token ids); an empty prompt starts from EOS, the document separator the
    models were trained with."""
    eos_id = tok.token_to_id(EOS)
    prompt_ids = tok.encode(prompt, add_special_tokens=False).ids if prompt else []
    if not prompt_ids:
        if eos_id is None:
            raise InputError(f"--prompt is empty and the tokenizer has no {EOS} token to start from")
        prompt_ids = [eos_id]
    return eos_id, prompt_ids


def sample_speculative_workdir(workdir, member: str, draft: str, draft_workdir, prompt: str, max_new_tokens: int,
                               temperature: float, top_k: int, top_p: float, seed: int,
                               gamma: int = inference.DEFAULT_GAMMA) -> dict:
    """`sample --member M --draft D`: M's continuation of `prompt`, drafted by D (of `draft_workdir`,
    default `workdir`), plus acceptance rate, tokens per target call and the wall-time speedup over
    M decoding alone (both timed after a warm-up run, same prompt and settings)."""
    inference.check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    inference.check_gamma(gamma)
    draft_workdir = draft_workdir or workdir
    target_stage = _member_stage(workdir, member, "--member")
    draft_stage = _member_stage(draft_workdir, draft, "--draft")
    tok = _tokenizer(workdir, "--workdir")
    if draft_workdir != workdir and _tokenizer(draft_workdir, "--draft_workdir").get_vocab() != tok.get_vocab():
        raise InputError(f"--draft_workdir={draft_workdir}: its tokenizer differs from --workdir's; the draft must "
                         "share the target's tokenizer")
    inference.check_draft(target_stage.model, draft_stage.model, f"--member={member}", f"--draft={draft}")
    eos_id, prompt_ids = _prompt_ids(tok, prompt)
    inference.check_prompt(prompt_ids, target_stage.model, max_new_tokens + gamma + 1)
    mesh = sharding.eval_mesh(jax.devices()[:1])
    target_params = workdir_lib.member_params(workdir, target_stage, mesh)
    draft_params = workdir_lib.member_params(draft_workdir, draft_stage, mesh)
    alone, t_alone = inference.timed(inference.generate, target_params, target_stage.model, prompt_ids, max_new_tokens, temperature,
                           top_k, seed, eos_id, top_p)
    spec, t_spec = inference.timed(inference.speculative_generate, target_params, target_stage.model, draft_params, draft_stage.model,
                         prompt_ids, max_new_tokens, gamma, temperature, top_k, top_p, seed, eos_id)
    new = spec.tokens[0]
    if new and new[-1] == eos_id:
        new = new[:-1]
    return {"text": _continuation_text(tok, prompt_ids, new), "tokens": spec.tokens[0],
            "target_alone_tokens": alone, "acceptance_rate": spec.acceptance_rate,
            "tokens_per_target_call": spec.tokens_per_target_call, "target_seconds": t_alone,
            "speculative_seconds": t_spec, "speedup": t_alone / t_spec}


def evaluate_speculative(workdir, gamma: int = inference.DEFAULT_GAMMA) -> dict[str, dict]:
    """`evaluate --speculative`: each finished member's acceptance rate drafting for the next finished
    member on held-out prompts, at temperature 0 and 1; merged into W/eval.json under
    members[name].draft_acceptance. Returns {name: draft_acceptance}."""
    inference.check_gamma(gamma)
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    done = [s for s in stages if checkpoint.has_checkpoint(workdir_lib.member_dir(workdir, s.name))]
    if not done:
        raise InputError(f"--workdir={workdir} holds no finished member; train the family first")
    corpus = data.prepare(cfg.data, cfg.model.vocab_size, workdir)
    host = data.eval_batches(corpus.eval, cfg.data.seq_len, cfg.data.batch_size, cfg.data.eval_batches)
    mesh = sharding.eval_mesh()
    params = [workdir_lib.member_params(workdir, s, mesh) for s in done]
    with jax.set_mesh(mesh):
        rates = inference.family_acceptance(params, [s.model for s in done], host, gamma)
    result = {}
    for s, nxt, rate in zip(done, done[1:], rates):
        result[s.name] = {"target": nxt.name, **rate}
    if jax.process_index() == 0:
        path = storage.join(workdir, "eval.json")
        existing = json.loads(path.read_text()) if path.exists() else {"members": {}}
        for name, rate in result.items():
            existing["members"].setdefault(name, {})["draft_acceptance"] = rate
        storage.atomic_write_text(path, json.dumps(existing, indent=2))
    return result
