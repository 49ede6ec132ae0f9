"""Evaluating a run's finished members (the `evaluate` command and the experiments): held-out loss and task files
(`evaluate_members`), the standard benchmarks (`evaluate_workdir`), draft acceptance between adjacent members
(`evaluate_speculative`). Each checks every input before it scores anything, reads the run's tokenizer through its
one lookup, and merges its results into W/eval.json through its one writer (eval/report.update_eval_json)."""

from __future__ import annotations

from pathlib import Path

import jax

from jaxgrow import config as config_lib
from jaxgrow.data import corpus as corpus_lib, pipeline, tokenizers as tokenizers_lib
from jaxgrow.eval import evaluate, report
from jaxgrow.eval.benchmarks import scoring as bench_scoring, tasks as bench_tasks
from jaxgrow.family import lock, workdir as workdir_lib
from jaxgrow.model import sharding
from jaxgrow.serve import speculative
from jaxgrow.train import checkpoint


def run_tokenizer(workdir: Path, cfg) -> tokenizers_lib.TokenizerInfo:
    """The run's tokenizer with its EOS/BOS as the run trained with them (tokenizers.run_tokenizer)."""
    return tokenizers_lib.run_tokenizer(workdir, cfg.model.vocab_size if not len(cfg.members) else
                                        config_lib.members(cfg)[0].model.vocab_size, cfg.data.eos_token,
                                        cfg.data.bos_token)


def _load_tasks(path: str) -> list[dict]:
    """evaluate.load_tasks with its ValueError (a malformed file) turned into a one-line InputError."""
    try:
        return evaluate.load_tasks(path)
    except UnicodeDecodeError as e:
        raise config_lib.InputError(f"--tasks: {path} is not UTF-8 text ({e.reason} at byte {e.start}); give a "
                                    "UTF-8 JSONL task file") from None
    except (ValueError, AssertionError, OSError) as e:
        raise config_lib.InputError(str(e) or f"--tasks: {path} is not a valid task file") from None


def _finished(workdir: Path, stages: list, member: str | None = None) -> list:
    names = [s.name for s in stages]
    if member is not None and member not in names:
        raise config_lib.InputError(f"--member={member} is not a member of {workdir}; members: {', '.join(names)}")
    done = [s for s in stages if member in (None, s.name)
            and checkpoint.has_checkpoint(workdir_lib.member_dir(workdir, s.name))]
    if not done:
        which = f"member {member!r}" if member else "finished member"
        raise config_lib.InputError(f"--workdir={workdir} holds no {which} checkpoint; train the family first")
    return done


def _held_out(workdir: Path, cfg, mesh) -> tuple[corpus_lib.Corpus, list]:
    """The run's held-out stream (eval split only: evaluation never tokenizes training data) as device batches."""
    corpus = corpus_lib.prepare(cfg.data, cfg.model.vocab_size, workdir, splits=("eval",))
    return corpus, pipeline.device_eval_batches(corpus.eval, cfg.data, mesh)


def evaluate_members(workdir: Path, task_files: list[str], member: str | None = None, limit: int | None = None) -> dict:
    """Held-out loss and multiple-choice accuracy (acc_norm) of every finished member (or `member`) on the first
    `limit` items of each task file (None: all); merged into W/eval.json."""
    bench_tasks.check_args(limit, 0)
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    items = {Path(f).stem: _load_tasks(f)[:limit] for f in task_files}
    chosen = _finished(workdir, stages, member)
    workdir_lib.check_writable(workdir)  # eval.json: checked before anything is computed
    lock.check_free(workdir)
    mesh = sharding.eval_mesh()
    corpus, batches = _held_out(workdir, cfg, mesh)
    result: dict = {"convention": evaluate.__doc__.split("\n\n")[1].replace("\n", " "), "members": {}}
    with jax.set_mesh(mesh):
        for s in chosen:
            params = workdir_lib.member_params(workdir, s, mesh)
            entry = {"eval_loss": evaluate.eval_loss(params, s.model, batches, corpus.document_eos(cfg.data)),
                     "tasks": {}}
            for name, task in items.items():
                entry["tasks"][name] = evaluate.score_tasks(params, s.model, corpus.tokenizer, task, cfg.data.seq_len)
            result["members"][s.name] = entry
    report.update_eval_json(workdir, result["members"], convention=result["convention"])
    return result


def evaluate_workdir(workdir: Path, suite: str, member: str | None = None, limit: int | None = None, shots: int = 0,
                     log_samples: bool = False, progress: bool = True, batch_tokens: int | None = None) -> dict:
    """Scores finished members on the standard benchmark suite(s); merged into W/eval.json, report.md and (with
    log_samples) eval_samples/. Every input is checked before any scoring, and nothing is written unless every
    member was scored."""
    suites = bench_tasks.parse_suites(suite)
    bench_tasks.check_args(limit, shots)
    root = bench_tasks.data_root()
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    workdir_lib.check_writable(workdir)  # eval.json and report.md: checked before anything is scored
    names = [s.name for s in stages]
    if member is not None and member not in names:
        raise bench_tasks.BenchmarkError(f"--member={member!r} is not a member of this run; members: {names}")
    try:
        chosen = _finished(workdir, stages, member)
    except config_lib.InputError as e:
        raise bench_tasks.BenchmarkError(str(e)) from None
    tokenizer = run_tokenizer(workdir, cfg).tokenizer
    items = {t: bench_tasks.load_items(t, shots, limit, root) for tasks in suites.values() for t in tasks}
    mesh = sharding.eval_mesh()
    update: dict = {}
    samples: dict = {}
    for s in chosen:
        params = workdir_lib.member_params(workdir, s, mesh)
        entry = update.setdefault(s.name, {})
        for suite_name, tasks in suites.items():
            for t in tasks:
                metrics, records = bench_scoring.score_task(params, s.model, tokenizer, t, items[t], mesh, shots,
                                                            batch_tokens=batch_tokens, progress=progress,
                                                            desc=f"{s.name} {t}")
                metrics["limit"] = limit
                entry.setdefault(suite_name, {})[t] = metrics
                samples[(s.name, t)] = records
        del params
    report.update_eval_json(workdir, update, samples if log_samples else None)
    return {"members": update}


def evaluate_speculative(workdir: Path, gamma: int = speculative.DEFAULT_GAMMA) -> dict[str, dict]:
    """Each finished member's acceptance rate drafting for the next finished member (family order) on held-out
    prompts, at temperature 0 and 1; merged into W/eval.json under members[name].draft_acceptance."""
    speculative.check_gamma(gamma)
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    done = sorted(_finished(workdir, stages), key=lambda s: s.family_position)
    workdir_lib.check_writable(workdir)  # eval.json: checked before anything is computed
    mesh = sharding.eval_mesh()
    _, batches = _held_out(workdir, cfg, mesh)
    params = [workdir_lib.member_params(workdir, s, mesh) for s in done]
    with jax.set_mesh(mesh):
        rates = speculative.family_acceptance(params, [s.model for s in done], batches, gamma)
    result = {s.name: {"target": nxt.name, **rate} for s, nxt, rate in zip(done, done[1:], rates)}
    report.update_eval_json(workdir, {name: {"draft_acceptance": rate} for name, rate in result.items()})
    return result
