"""The paper's claims on one corpus, measured: four arms trained on the same data and budgets.

    python experiments/reproduce_paper.py --config configs/family_cpu.py --workdir W [--config.x=y ...]
        [--arms progressive,fixed_lr,independent,consistency] [--fixed_lr 0] [--consistency_weight 0.5]

Arms (each a normal, resumable family run in W/arms/<arm>/):
    progressive   progressive training, size-adaptive peak LR (the config's lr.rule)
    fixed_lr      progressive training, one constant peak LR for every member (default: the
                  adaptive rule's peak for the smallest member, i.e. "keep the LR you started with")
    independent   every member from scratch, tokens proportional to size, size-adaptive LR
    consistency   progressive + cross-size consistency: + w * KL(p_prev || p_this) for the first
                  consistency_fraction of each stage (teacher forwards counted in the FLOPs)

Writes W/comparison.json, W/comparison.md and W/comparison.png (held-out loss vs cumulative train
FLOPs, all arms). Downstream accuracy uses a multiple-choice task generated from the held-out text
(W/tasks.jsonl; see jaxgrow/evaluate.py for the scoring convention). Rerunning resumes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

ARMS = ("progressive", "fixed_lr", "independent", "consistency")

_CONFIG = config_flags.DEFINE_config_file("config", None, "family config", lock_config=False)
flags.DEFINE_string("workdir", None, "output directory")
flags.DEFINE_list("arms", list(ARMS), "arms to run")
flags.DEFINE_float("fixed_lr", 0.0, "fixed_lr arm's constant peak LR (0: the adaptive peak of the smallest member)")
flags.DEFINE_float("consistency_weight", 0.5, "consistency arm: KL weight")
flags.DEFINE_float("consistency_fraction", 0.5, "consistency arm: fraction of each stage with the KL term")
flags.DEFINE_integer("task_items", 200, "items in the generated multiple-choice task")
flags.DEFINE_string("bench_suite", "core", "standard benchmarks per member per arm (jaxgrow/benchmarks.py; '' = off)")
flags.DEFINE_integer("bench_limit", 100, "items per benchmark task (MMLU: per subject); 0 = all")
FLAGS = flags.FLAGS


def arm_config(base: ml_collections.ConfigDict, arm: str) -> ml_collections.ConfigDict:
    from jaxgrow import budgets, schedules  # noqa: PLC0415

    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.mode = "independent" if arm == "independent" else "progressive"
    if arm == "fixed_lr":
        first = budgets.budgets(base)[0]
        lr = base.lr
        peak = FLAGS.fixed_lr or schedules.peak_lr(first.non_embedding_params, lr.rule, peak=lr.peak, n_ref=lr.n_ref,
                                                   alpha=lr.alpha, table=lr.table)
        cfg.lr.rule, cfg.lr.peak = "constant", float(peak)
    if arm == "consistency":
        cfg.consistency.weight = FLAGS.consistency_weight
        cfg.consistency.fraction = FLAGS.consistency_fraction
    return cfg


def run_arm(arm: str, cfg, workdir: Path, tasks: Path) -> dict:
    from jaxgrow import commands, faults, family  # noqa: PLC0415

    done = workdir / "report.json"
    if not (done.exists() and (workdir / "eval.json").exists()):
        t0 = time.perf_counter()
        with faults.SignalFlag() as signals:
            setup = family.run(cfg, workdir, signals)
        family.write_report(setup)
        commands.evaluate_members(workdir, [str(tasks)])
        print(f"[{arm}] trained and evaluated in {time.perf_counter() - t0:.0f}s", flush=True)
    run_benchmarks(arm, workdir)
    return {"report": json.loads(done.read_text()), "eval": json.loads((workdir / "eval.json").read_text())}


def run_benchmarks(arm: str, workdir: Path) -> None:
    """The standard suite for every member of the arm (skipped when eval.json already has it)."""
    from jaxgrow import benchmarks  # noqa: PLC0415

    if not FLAGS.bench_suite:
        return
    suites = benchmarks.parse_suites(FLAGS.bench_suite)
    members = json.loads((workdir / "eval.json").read_text())["members"]
    if all(all(t in m.get(s, {}) for s, ts in suites.items() for t in ts) for m in members.values()):
        return
    t0 = time.perf_counter()
    benchmarks.evaluate_workdir(workdir, FLAGS.bench_suite, limit=FLAGS.bench_limit or None, progress=False)
    print(f"[{arm}] benchmarks {FLAGS.bench_suite} in {time.perf_counter() - t0:.0f}s", flush=True)


def benchmark_comparison(results: dict) -> dict:
    """member -> arm -> suite -> task -> metrics (with standard errors), from each arm's eval.json."""
    out: dict = {}
    for arm, r in results.items():
        for name, entry in r["eval"]["members"].items():
            suites = {k: v for k, v in entry.items() if k in ("core", "math")}
            if suites:
                out.setdefault(name, {})[arm] = suites
    return out


def benchmark_markdown(c: dict) -> list[str]:
    from jaxgrow import benchmarks  # noqa: PLC0415

    lines = []
    for name, arms in c.get("benchmarks", {}).items():
        cols = [(s, t) for s in benchmarks.SUITES for t in benchmarks.SUITES[s]
                if any(t in a.get(s, {}) for a in arms.values())]
        lines += ["", f"Standard benchmarks, member {name} (primary metric ± standard error):", "",
                  "| arm | " + " | ".join(f"{t} {benchmarks.PRIMARY[t]}" for _, t in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for arm, suites in arms.items():
            lines.append(f"| {arm} | " + " | ".join(benchmarks._cell(suites.get(s, {}).get(t), benchmarks.PRIMARY[t])
                                                   for s, t in cols) + " |")
    return lines


def write_tasks(cfg, path: Path) -> None:
    from jaxgrow import data, evaluate  # noqa: PLC0415

    if path.exists():
        return
    src = data.sources(cfg.data)
    texts = data.read_documents(src.eval, cfg.data.text_field, "data.eval_files")
    items = evaluate.make_continuation_tasks(texts, n_items=FLAGS.task_items, seed=cfg.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items))


def compare(results: dict) -> dict:
    from jaxgrow import inference  # noqa: PLC0415

    arms = list(results)
    names = [m["name"] for m in results[arms[0]]["report"]["members"]]
    total = {a: r["report"]["total_train_flops"] for a, r in results.items()}
    baseline = total.get("independent")
    task = lambda r, name: next(iter(r["eval"]["members"][name]["tasks"].values()))["acc_norm"]  # noqa: E731
    members = []
    for i, name in enumerate(names):
        members.append({
            "name": name,
            "eval_loss": {a: r["report"]["members"][i]["eval_loss"] for a, r in results.items()},
            "task_accuracy": {a: task(r, name) for a, r in results.items()},
            "train_flops": {a: r["report"]["members"][i]["train_flops"] for a, r in results.items()},
        })
    kl = {a: float(np.mean([m["kl_to_next"] for m in r["report"]["members"][:-1]])) for a, r in results.items()}
    kl_sym = {a: float(np.mean([(m["kl_to_next"] + m["kl_from_next"]) / 2 for m in r["report"]["members"][:-1]]))
              for a, r in results.items()}
    return {
        "flops_saved_fraction": {a: (1.0 - t / baseline) if baseline else None for a, t in total.items()},
        "members": members,
        "mean_adjacent_kl": kl,
        "mean_adjacent_kl_symmetric": kl_sym,
        "mean_draft_acceptance": {a: inference.mean_draft_acceptance(r["report"]["members"]) for a, r in results.items()},
        "total_train_flops": total,
        "kl_definition": "mean over adjacent pairs (k, k+1) of per-token KL(p_k || p_k+1) on the held-out batches, nats",
        "task": "acc_norm on a 4-way 'which continuation follows this passage' task from the held-out text",
        "benchmarks": benchmark_comparison(results),
    }


def markdown(c: dict) -> str:
    arms = list(c["total_train_flops"])
    out = ["# Reproduction: progressive vs independent family", "",
           "| arm | total train FLOPs | FLOPs saved vs independent | mean adjacent KL | mean eval loss "
           "| mean draft acceptance (T=0 / T=1) |",
           "|---|---:|---:|---:|---:|---:|"]
    for a in arms:
        saved = c["flops_saved_fraction"][a]
        mean_loss = np.mean([m["eval_loss"][a] for m in c["members"]])
        out.append(f"| {a} | {c['total_train_flops'][a]:.4g} | {'—' if saved is None else f'{100 * saved:.1f}%'} | "
                   f"{c['mean_adjacent_kl'][a]:.4f} | {mean_loss:.4f} | {_acceptance(c, a)} |")
    out += ["", "Held-out loss per member (nats/token):", "",
            "| member | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for m in c["members"]:
        out.append(f"| {m['name']} | " + " | ".join(f"{m['eval_loss'][a]:.4f}" for a in arms) + " |")
    out += ["", "Multiple-choice accuracy (acc_norm) per member:", "",
            "| member | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for m in c["members"]:
        out.append(f"| {m['name']} | " + " | ".join(f"{m['task_accuracy'][a]:.3f}" for a in arms) + " |")
    out += benchmark_markdown(c)
    return "\n".join(out) + "\n"


def _acceptance(c: dict, arm: str) -> str:
    a = c.get("mean_draft_acceptance", {}).get(arm)
    return "—" if not a else f"{a['temperature_0']:.3f} / {a['temperature_1']:.3f}"


def main(argv):
    from jaxgrow import config as config_lib, logs, report  # noqa: PLC0415

    if FLAGS.workdir is None or _CONFIG.value is None:
        raise app.UsageError("--config and --workdir are required")
    unknown = [a for a in FLAGS.arms if a not in ARMS]
    if unknown:
        raise app.UsageError(f"--arms: unknown {unknown}; valid: {list(ARMS)}")
    logs.setup()
    base = _CONFIG.value
    config_lib.validate(base)
    workdir = Path(FLAGS.workdir)
    tasks = workdir / "tasks.jsonl"
    write_tasks(base, tasks)
    results = {}
    for arm in FLAGS.arms:
        results[arm] = run_arm(arm, arm_config(base, arm), workdir / "arms" / arm, tasks)
    comparison = compare(results)
    (workdir / "comparison.json").write_text(json.dumps(comparison, indent=2))
    (workdir / "comparison.md").write_text(markdown(comparison))
    series = {arm: report.eval_series(report.read_metrics(workdir / "arms" / arm)) for arm in results}
    report.plot_eval_vs_flops(series, workdir / "comparison.png", "held-out loss vs cumulative train FLOPs")
    print(markdown(comparison))
    print(f"wrote {workdir / 'comparison.json'}, comparison.md, comparison.png")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
