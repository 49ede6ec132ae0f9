"""Decoding with a run's finished members (the `sample` command): plain or speculative (a smaller member drafting),
prompts through the run's tokenizer with its own end of text. jaxgrow.serve does the decoding (prefill + KV cache,
speculative sampling); this module finds the members, the tokenizer and its EOS/BOS in the workdir."""

from __future__ import annotations

from pathlib import Path

import jax

from jaxgrow.config import InputError
from jaxgrow.data import tokenizers as tokenizers_lib
from jaxgrow.family import evaluation, workdir as workdir_lib
from jaxgrow.model import sharding
from jaxgrow.serve import decode, speculative
from jaxgrow.train import checkpoint


def continuation_text(tok, prompt_ids: list[int], new_ids: list[int]) -> str:
    """Decoded continuation; decodes prompt + continuation together so byte-level tokens that
    split a UTF-8 character across the boundary still decode correctly."""
    prompt_text = tok.decode(prompt_ids, skip_special_tokens=False)
    full = tok.decode(prompt_ids + new_ids, skip_special_tokens=False)
    return full[len(prompt_text):] if full.startswith(prompt_text) else tok.decode(new_ids, skip_special_tokens=False)


def prompt_ids(info: tokenizers_lib.TokenizerInfo, prompt: str) -> list[int]:
    """The prompt's token ids; an empty prompt starts where the run's documents start: its BOS when it trained with
    one (data.bos_token), else its EOS (the separator every document followed)."""
    ids = info.tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
    return ids or [info.bos_id if info.bos_id >= 0 else info.eos_id]


def _without_eos(new: list[int], eos_id: int) -> list[int]:
    return new[:-1] if new and new[-1] == eos_id else new


def sample_workdir(workdir: Path, member: str | None, prompt: str, max_new_tokens: int, temperature: float,
                   top_k: int, seed: int, top_p: float = 1.0) -> dict[str, str]:
    """Continuation text of `prompt` per member (member=None: every finished member), decoded with the run's
    tokenizer; stops at max_new_tokens or at the run's EOS (not included)."""
    decode.check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    cfg, stages = workdir_lib.select_members(workdir, member)
    info = evaluation.run_tokenizer(workdir, cfg)
    ids = prompt_ids(info, prompt)
    mesh = sharding.eval_mesh(jax.devices()[:1])  # tiny models and no batch to split: one device
    results = {}
    for stage in stages:
        params = workdir_lib.member_params(workdir, stage, mesh)
        new = decode.generate(params, stage.model, ids, max_new_tokens, temperature, top_k, seed, info.eos_id, top_p)
        results[stage.name] = continuation_text(info.tokenizer, ids, _without_eos(new, info.eos_id))
    return results


def _member_stage(workdir, name: str, flag: str):
    _, stages = workdir_lib.load_setup_for_eval(workdir)
    by_name = {s.name: s for s in stages}
    if name not in by_name:
        raise InputError(f"{flag}={name} is not a member of {workdir}; members: {', '.join(by_name)}")
    if not checkpoint.has_checkpoint(workdir_lib.member_dir(workdir, name)):
        raise InputError(f"{flag}={name}: {workdir_lib.member_dir(workdir, name)} holds no checkpoint; train first")
    return by_name[name]


def sample_speculative_workdir(workdir, member: str, draft: str, draft_workdir, prompt: str, max_new_tokens: int,
                               temperature: float, top_k: int, top_p: float, seed: int,
                               gamma: int = speculative.DEFAULT_GAMMA) -> dict:
    """`sample --member M --draft D`: M's continuation of `prompt`, drafted by D (of `draft_workdir`, default
    `workdir`), plus acceptance rate, tokens per target call and the wall-time speedup over M decoding alone (both
    timed after a warm-up run, same prompt and settings)."""
    decode.check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    speculative.check_gamma(gamma)
    draft_workdir = draft_workdir or workdir
    target_stage = _member_stage(workdir, member, "--member")
    draft_stage = _member_stage(draft_workdir, draft, "--draft")
    cfg = workdir_lib.read_run_config(workdir)
    info = evaluation.run_tokenizer(workdir, cfg)
    if draft_workdir != workdir:
        draft_info = evaluation.run_tokenizer(draft_workdir, workdir_lib.read_run_config(draft_workdir, "--draft_workdir"))
        if draft_info.sha256 != info.sha256:
            raise InputError(f"--draft_workdir={draft_workdir}: its tokenizer differs from --workdir's; the draft must "
                             "share the target's tokenizer")
    speculative.check_draft(target_stage.model, draft_stage.model, f"--member={member}", f"--draft={draft}")
    ids = prompt_ids(info, prompt)
    decode.check_prompt(ids, target_stage.model, max_new_tokens + gamma + 1)
    mesh = sharding.eval_mesh(jax.devices()[:1])
    target_params = workdir_lib.member_params(workdir, target_stage, mesh)
    draft_params = workdir_lib.member_params(draft_workdir, draft_stage, mesh)
    alone, t_alone = decode.timed(decode.generate, target_params, target_stage.model, ids, max_new_tokens, temperature,
                                  top_k, seed, info.eos_id, top_p)
    spec, t_spec = decode.timed(speculative.speculative_generate, target_params, target_stage.model, draft_params,
                                draft_stage.model, ids, max_new_tokens, gamma, temperature, top_k, top_p, seed,
                                info.eos_id)
    new = _without_eos(spec.tokens[0], info.eos_id)
    return {"text": continuation_text(info.tokenizer, ids, new), "tokens": spec.tokens[0],
            "target_alone_tokens": alone, "acceptance_rate": spec.acceptance_rate,
            "tokens_per_target_call": spec.tokens_per_target_call, "target_seconds": t_alone,
            "speculative_seconds": t_spec, "speedup": t_alone / t_spec}
