"""A run to and from Hugging Face: `export` writes members as LlamaForCausalLM checkpoints (the format and the
streamed writer are jaxgrow.interop), `import` turns a Hugging Face Llama checkpoint into a finished one-member run
that `expand` or `prune` can start a family from."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax

from jaxgrow import config as config_lib, storage
from jaxgrow.data import tokenizers as tokenizers_lib
from jaxgrow.data.formats import DataError
from jaxgrow.family import checks, evaluation, lock, workdir as workdir_lib
from jaxgrow.interop import export, hf
from jaxgrow.train import checkpoint, faults, trainer


log = logging.getLogger("jaxgrow")


def export_workdir(workdir: Path, out: Path, member: str | None, max_position_embeddings: int | None = None,
                   dtype: str = "float32") -> list[Path]:
    """Exports one member to `out`, or (member=None) every finished member to out/<name>/.
    The run's tokenizer goes along with its EOS/BOS; max_position_embeddings defaults to the sequence length the run
    trained at (data.seq_len: what transformers users read it as); dtype: float32 or bfloat16."""
    hf.check_export_args(max_position_embeddings, dtype)
    cfg, stages = workdir_lib.select_members(workdir, member)
    max_position_embeddings = max_position_embeddings or int(cfg.data.seq_len)
    storage.check_apart(out, workdir, "--out", "the run's workdir")
    workdir_lib.check_writable(out, "--out")
    tokenizer, specials = None, {"eos_token": None, "bos_token": None}
    if storage.join(workdir, tokenizers_lib.RUN_TOKENIZER).is_file():
        info = evaluation.run_tokenizer(workdir, cfg)
        # the run's own document delimiters, so transformers' generate stops where the run's documents end
        tokenizer, specials = info.tokenizer, {"eos_token": info.eos_token, "bos_token": info.bos_token or None}
    else:
        log.warning("%s has no tokenizer.json; exporting weights without a tokenizer", workdir)
    written = []
    storage.sweep_scratch("export")
    for stage in stages:  # params stay sharded: export streams them tensor by tensor (jaxgrow/interop/export.py)
        params = workdir_lib.member_params(workdir, stage)
        dest = storage.join(out) if member is not None else storage.join(out, stage.name)
        written.append(_save(params, stage.model, dest, tokenizer, max_position_embeddings, dtype, specials))
        faults.point("export_writing")
    return written


def _save(params, model_cfg, dest, tokenizer, max_position_embeddings, dtype, specials) -> Any:
    if not storage.is_remote(dest):
        return export.save_pretrained(params, model_cfg, dest, tokenizer, max_position_embeddings=max_position_embeddings,
                                      dtype=dtype, **specials)
    # the streaming writer needs files it can seek and rename: write locally, then upload each file
    # (every object appears all-or-nothing; config.json last, so a reader finding it finds the weights)
    tmp = storage.scratch_dir("export")
    try:
        export.save_pretrained(params, model_cfg, tmp, tokenizer, max_position_embeddings=max_position_embeddings,
                               dtype=dtype, **specials)
        for rel in sorted(storage.list_files(tmp), key=lambda r: r == "config.json"):
            storage.copy_file(Path(tmp, rel), storage.join(dest, rel))
    finally:
        storage.release_scratch(tmp)
    return dest


def import_to_workdir(hf_dir: Path, workdir: Path) -> Path:
    """Writes `workdir` as a finished one-member run (member 'model') holding the HF checkpoint:
    members/model/ (params, a fresh optimizer state, meta), config.json (base_config with the
    imported model) and the HF tokenizer.json when there is one (pinned). Grow it with
    `expand --from W/members/model`, or cut it down with `prune --from W/members/model`. Returns the member
    directory."""
    params, model_cfg = hf.load_params(hf_dir)
    cfg = config_lib.base_config()
    cfg.model = model_cfg
    checks.validate(cfg)
    storage.check_apart(workdir, hf_dir, "--workdir", "the --hf checkpoint")
    workdir_lib.check_workdir_writable(workdir)
    out_dir = workdir_lib.member_dir(workdir, hf.IMPORTED_MEMBER)
    if storage.join(workdir, "config.json").exists():
        raise config_lib.InputError(f"--workdir={workdir} already holds a run; give an empty or new directory")
    tokenizer = Path(hf_dir, "tokenizer.json")
    info = imported_tokenizer(tokenizer, model_cfg)
    lock.check_free(workdir)

    device = jax.devices()[0]
    params = jax.device_put(params, device)
    opt_state = jax.jit(trainer.make_optimizer(cfg.optimizer, model_cfg).init)(params)
    workdir.mkdir(parents=True, exist_ok=True)
    with lock.held(workdir, "import"):
        storage.remove_tree(out_dir)  # an import killed before its config.json: redone from the start
        if tokenizer.is_file():
            storage.copy_file(tokenizer, storage.join(workdir, "tokenizer.json"))
            if info is not None:
                tokenizers_lib.pin(workdir, info, specials=False)
        ckpts = checkpoint.Checkpoints(out_dir)
        ckpts.save(0, params, opt_state, checkpoint.Meta(stage=0, member=hf.IMPORTED_MEMBER, mode=cfg.mode,
                                                         model=model_cfg.to_dict(),
                                                         imported_from=str(Path(hf_dir).resolve())))
        ckpts.close()
        workdir_lib.write_config(cfg, workdir)  # last: a workdir with a config.json holds the whole import
    return out_dir


def imported_tokenizer(tokenizer: Path, model_cfg: Any) -> tokenizers_lib.TokenizerInfo | None:
    """The imported tokenizer as the run will use it, or None with a warning (the import itself succeeds) when the
    data rules would refuse it: more tokens than model.vocab_size, or no EOS token that data.eos_token could name."""
    if not tokenizer.is_file():
        log.warning("%s has no tokenizer.json; set data.tokenizer before training on the imported run",
                    tokenizer.parent)
        return None
    try:
        return tokenizers_lib.load_tokenizer(tokenizer, model_cfg.vocab_size, "tokenizer.json")
    except DataError as e:  # unparseable file, too many tokens, or no recognised EOS token
        log.warning("%s; training on the imported run needs data.tokenizer / data.eos_token that fit", e)
        return None
