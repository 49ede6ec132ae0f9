"""The `sample` command (plain or speculative) and `evaluate --speculative`: members of a workdir
decoding with jaxgrow.serve (prefill + KV cache, speculative sampling), prompts through the run's
tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from jaxgrow import storage
from jaxgrow.config import InputError
from jaxgrow.data import corpus as corpus_lib, pipeline, tokenizers as tokenizers_lib
from jaxgrow.data.tokenizers import DEFAULT_EOS as EOS
from jaxgrow.eval import report
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.model import sharding
from jaxgrow.serve import decode, speculative
from jaxgrow.train import checkpoint


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
    decode.check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    _, stages = workdir_lib.select_members(workdir, member)
    tok = _tokenizer(workdir, "--workdir")
    eos_id, prompt_ids = _prompt_ids(tok, prompt)
    mesh = sharding.eval_mesh(jax.devices()[:1])  # tiny models and no batch to split: one device
    results = {}
    for stage in stages:
        params = workdir_lib.member_params(workdir, stage, mesh)
        new = decode.generate(params, stage.model, prompt_ids, max_new_tokens, temperature, top_k, seed, eos_id, top_p)
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
    return tokenizers_lib.read_tokenizer(str(path), flag)  # local or remote; a damaged file is one line


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
                               gamma: int = speculative.DEFAULT_GAMMA) -> dict:
    """`sample --member M --draft D`: M's continuation of `prompt`, drafted by D (of `draft_workdir`,
    default `workdir`), plus acceptance rate, tokens per target call and the wall-time speedup over
    M decoding alone (both timed after a warm-up run, same prompt and settings)."""
    decode.check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    speculative.check_gamma(gamma)
    draft_workdir = draft_workdir or workdir
    target_stage = _member_stage(workdir, member, "--member")
    draft_stage = _member_stage(draft_workdir, draft, "--draft")
    tok = _tokenizer(workdir, "--workdir")
    if draft_workdir != workdir and _tokenizer(draft_workdir, "--draft_workdir").get_vocab() != tok.get_vocab():
        raise InputError(f"--draft_workdir={draft_workdir}: its tokenizer differs from --workdir's; the draft must "
                         "share the target's tokenizer")
    speculative.check_draft(target_stage.model, draft_stage.model, f"--member={member}", f"--draft={draft}")
    eos_id, prompt_ids = _prompt_ids(tok, prompt)
    decode.check_prompt(prompt_ids, target_stage.model, max_new_tokens + gamma + 1)
    mesh = sharding.eval_mesh(jax.devices()[:1])
    target_params = workdir_lib.member_params(workdir, target_stage, mesh)
    draft_params = workdir_lib.member_params(draft_workdir, draft_stage, mesh)
    alone, t_alone = decode.timed(decode.generate, target_params, target_stage.model, prompt_ids, max_new_tokens, temperature,
                           top_k, seed, eos_id, top_p)
    spec, t_spec = decode.timed(speculative.speculative_generate, target_params, target_stage.model, draft_params, draft_stage.model,
                         prompt_ids, max_new_tokens, gamma, temperature, top_k, top_p, seed, eos_id)
    new = spec.tokens[0]
    if new and new[-1] == eos_id:
        new = new[:-1]
    return {"text": _continuation_text(tok, prompt_ids, new), "tokens": spec.tokens[0],
            "target_alone_tokens": alone, "acceptance_rate": spec.acceptance_rate,
            "tokens_per_target_call": spec.tokens_per_target_call, "target_seconds": t_alone,
            "speculative_seconds": t_spec, "speedup": t_alone / t_spec}


def evaluate_speculative(workdir, gamma: int = speculative.DEFAULT_GAMMA) -> dict[str, dict]:
    """`evaluate --speculative`: each finished member's acceptance rate drafting for the next finished
    member on held-out prompts, at temperature 0 and 1; merged into W/eval.json under
    members[name].draft_acceptance. Returns {name: draft_acceptance}."""
    speculative.check_gamma(gamma)
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    done = [s for s in stages if checkpoint.has_checkpoint(workdir_lib.member_dir(workdir, s.name))]
    if not done:
        raise InputError(f"--workdir={workdir} holds no finished member; train the family first")
    workdir_lib.check_writable(workdir)  # eval.json: checked before anything is computed
    corpus = corpus_lib.prepare(cfg.data, cfg.model.vocab_size, workdir, splits=("eval",))
    host = pipeline.eval_batches(corpus.eval, cfg.data.seq_len, cfg.data.batch_size, cfg.data.eval_batches)
    mesh = sharding.eval_mesh()
    params = [workdir_lib.member_params(workdir, s, mesh) for s in done]
    with jax.set_mesh(mesh):
        rates = speculative.family_acceptance(params, [s.model for s in done], host, gamma)
    result = {}
    for s, nxt, rate in zip(done, done[1:], rates):
        result[s.name] = {"target": nxt.name, **rate}
    if jax.process_index() == 0:
        path = storage.join(workdir, "eval.json")
        existing = json.loads(path.read_text()) if path.exists() else {"members": {}}
        for name, rate in result.items():
            existing["members"].setdefault(name, {})["draft_acceptance"] = rate
        storage.atomic_write_text(path, json.dumps(existing, indent=2))
        report.render_markdown(workdir)
    return result
