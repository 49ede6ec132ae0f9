"""`evaluate --suite`: scores a workdir's finished members on the standard benchmarks
(jaxgrow.eval.benchmarks) and merges the results into W/eval.json and report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax

from jaxgrow import storage
from jaxgrow.data import tokenizers as tokenizers_lib
from jaxgrow.eval import report
from jaxgrow.eval.benchmarks import results as bench_results, scoring as bench_scoring, tasks as bench_tasks
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.model import sharding
from jaxgrow.train import checkpoint


def workdir_tokenizer(cfg: Any, workdir: Path):
    path = cfg.data.tokenizer or storage.join(workdir, "tokenizer.json")
    return tokenizers_lib.load_tokenizer(path, cfg.model.vocab_size, eos_token=cfg.data.get("eos_token", ""),
                               bos_token=cfg.data.get("bos_token", "")).tokenizer


def evaluate_workdir(workdir: Path, suite: str, member: str | None = None, limit: int | None = None, shots: int = 0,
                     log_samples: bool = False, progress: bool = True, batch_tokens: int | None = None) -> dict:
    """Scores finished members on the suite(s); merges into W/eval.json, report.md, eval_samples/.

    Every input is checked before any scoring, and nothing is written unless every member was scored."""
    suites = bench_tasks.parse_suites(suite)
    bench_tasks.check_args(limit, shots)
    root = bench_tasks.data_root()
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    workdir_lib.check_writable(workdir)  # eval.json and report.md: checked before anything is scored
    names = [s.name for s in stages]
    if member is not None and member not in names:
        raise bench_tasks.BenchmarkError(f"--member={member!r} is not a member of this run; members: {names}")
    chosen = [s for s in stages if member in (None, s.name) and checkpoint.has_checkpoint(workdir_lib.member_dir(workdir, s.name))]
    if not chosen:
        which = f"member {member!r}" if member else "finished member"
        raise bench_tasks.BenchmarkError(f"--workdir={workdir} holds no {which} checkpoint; train the family first")
    tokenizer = workdir_tokenizer(cfg, workdir)
    items = {t: bench_tasks.load_items(t, shots, limit, root) for tasks in suites.values() for t in tasks}
    mesh = sharding.eval_mesh()
    update: dict = {}
    all_samples: dict = {}
    for s in chosen:
        params = workdir_lib.member_params(workdir, s, mesh)
        entry = update.setdefault(s.name, {})
        for suite_name, tasks in suites.items():
            for t in tasks:
                metrics, samples = bench_scoring.score_task(params, s.model, tokenizer, t, items[t], mesh, shots,
                                              batch_tokens=batch_tokens, progress=progress, desc=f"{s.name} {t}")
                metrics["limit"] = limit
                entry.setdefault(suite_name, {})[t] = metrics
                all_samples[(s.name, t)] = samples
        del params
    result = bench_results.merge_eval_json(workdir, update)
    if jax.process_index() == 0:
        bench_results._atomic_write(storage.join(workdir, "eval.json"), json.dumps(result, indent=2))
        if log_samples:
            for (m, t), samples in all_samples.items():
                bench_results._atomic_write(storage.join(workdir, "eval_samples", m, f"{t}.jsonl"),
                              "".join(json.dumps(r) + "\n" for r in samples))
        report.render_markdown(workdir)  # every section from its JSON source: the Benchmarks one from eval.json
    return {"members": update}
