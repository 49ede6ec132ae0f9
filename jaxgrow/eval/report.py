"""report.json / report.md / PNG plots for a finished family run.

report.md is always rendered as a whole from its JSON sources (`render_markdown`): report.json (the family's
members, FLOPs, consistency, goodput, lineage) and eval.json (the Benchmarks section), so no writer can erase
another's section: a rerun of a finished run, `evaluate --suite` and `evaluate --tasks` all re-render it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from jaxgrow import storage
from jaxgrow.model import flops


log = logging.getLogger("jaxgrow")


def goodput_markdown(summary: dict) -> str:
    f = summary["fractions"]
    parts = ", ".join(f"{k} {100 * v:.1f}%" for k, v in f.items() if k != "train")  # the buckets in goodput.py's order
    return (f"Goodput: {100 * summary['goodput']:.1f}% of {summary['wall_seconds']:.1f}s wall time in train steps "
            f"(rest: {parts}; outside train steps excluding compile: "
            f"{100 * summary['non_train_excluding_compile']:.1f}%)")


PLOTS = {"eval_loss_vs_flops.png": "held-out loss vs cumulative train FLOPs",
         "lr_schedule.png": "LR schedule of every stage"}


def read_metrics(workdir: Path) -> list[dict]:
    """metrics.jsonl records; for repeated (stage, step, kind) after a resume the last one wins. A torn record (a
    kill or a full disk mid-write) is skipped with a warning."""
    records, skipped = storage.read_metrics(workdir)
    if skipped:
        log.warning("%s: skipped %d torn metrics record(s)", workdir, skipped)
    latest: dict[tuple, dict] = {}
    for r in records:
        latest[(r.get("stage"), r.get("step"), "eval_loss" in r, "bench_suite" in r)] = r
    return sorted(latest.values(), key=lambda r: (r.get("stage", 0), r.get("step", 0)))


def build(cfg: Any, stages: list, member_evals: list[dict], independent_stages: list, lineage: dict | None = None) -> dict:
    """The report dict; `stages` in family order (member_evals[i]: {'eval_loss', 'kl_to_next', 'kl_from_next', ...}
    of stages[i]). A member's cumulative FLOPs are those of every stage up to its own in training order (its
    `stage` index). lineage: the run this one was grown or pruned from (family/workdir.py: lineage.json); its train
    FLOPs count in every cumulative figure and in the savings against training this family from scratch."""
    before = float(lineage["train_flops"]) if lineage else 0.0
    own = float(sum(s.train_flops for s in stages))
    total = before + own
    independent_total = float(sum(s.train_flops for s in independent_stages))
    # a pruned run's parent was trained for its own sake (the largest member of another family): its FLOPs count in
    # the totals, but the saving compares what this run spent with training its members from scratch
    spent = own if lineage and lineage.get("kind") == "prune" else total
    members = []
    for s, ev in zip(stages, member_evals):
        cumulative = before + sum(o.train_flops for o in stages if _order(o) <= _order(s))
        row = getattr(s, "transition", None)
        members.append({
            "name": s.name, "stage": s.index, "params": s.params, "non_embedding_params": s.non_embedding_params,
            "tokens": s.tokens, "steps": s.steps, "train_flops": s.train_flops, "cumulative_train_flops": cumulative,
            "train_flops_per_token": s.train_flops_per_token,
            "teacher_forward_flops": (getattr(s, "teacher_active_steps", 0) * getattr(s, "teacher_forward_flops_per_token", 0.0)
                                      * s.tokens / max(s.steps, 1)),
            "transition": row.to_json() if row is not None else None,
            "transition_text": row.describe() if row is not None else None,
            "eval_loss": ev["eval_loss"], "eval_ppl": float(np.exp(min(ev["eval_loss"], 50.0))),
            "kl_to_next": ev["kl_to_next"], "kl_from_next": ev["kl_from_next"],
            "draft_acceptance": ev.get("draft_acceptance"), "epochs": ev.get("epochs"), "peak_lr": ev.get("peak_lr"),
        })
    grows = any(getattr(s, "transition", None) is not None and s.transition.init == "grow" for s in stages)
    out = {
        "mode": cfg.mode, "transitions": getattr(cfg, "transitions", "") or None, "flops_convention": flops.CONVENTION,
        "total_train_flops": total, "independent_total_train_flops": independent_total,
        "own_train_flops": own, "flops_saved_fraction": 1.0 - spent / independent_total if independent_total else 0.0,
        "expansion": {"method": cfg.expansion.method, "depth": cfg.expansion.depth} if grows else None,
        "lr_rule": cfg.lr.rule, "consistency_weight": cfg.consistency.weight, "members": members,
    }
    if lineage:
        out["lineage"] = {k: lineage[k] for k in ("kind", "parent", "train_flops", "tokens", "data") if k in lineage}
    return out


def _order(stage: Any) -> int:
    return getattr(stage, "index", 0)


def markdown(report: dict) -> str:
    lineage = report.get("lineage")
    grown = [] if not lineage else [
        f"{'Pruned' if lineage.get('kind') == 'prune' else 'Grown'} from {lineage['parent']['checkpoint']} (member "
        f"{lineage['parent']['member']}, step "
        f"{lineage['parent']['step']}): its {lineage['train_flops']:.4g} train FLOPs and {lineage['tokens']:,.0f} "
        "tokens are counted in the totals, the cumulative FLOPs and the epochs below"
        + (" (the saving compares this run's own FLOPs: the parent was trained for its own sake)."
           if lineage.get("kind") == "prune" else "."), ""]
    how = "custom transition table" if report.get("transitions") else report["mode"]
    if lineage and lineage.get("kind") == "prune":
        how = f"pruned from {lineage['parent']['member']}"
    lines = [f"# jaxgrow family report ({how})", "",
             f"Total train FLOPs: {report['total_train_flops']:.4g} "
             f"(independent family from scratch: {report['independent_total_train_flops']:.4g}; "
             f"saved: {100 * report['flops_saved_fraction']:.1f}%)", "", *grown,
             f"FLOPs convention: {report['flops_convention']}", "",
             "| member | stage: transition | params | non-emb params | tokens | train FLOPs (teacher incl.) | eval loss "
             "| eval ppl | KL(this‖next) | KL(next‖this) | draft acceptance for next (T=0 / T=1) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    for m in report["members"]:
        how = f"{m['stage']}: {m['transition_text']}" if m.get("transition_text") else "—"
        lines.append(f"| {m['name']} | {how} | {m['params']:,} | {m['non_embedding_params']:,} | {m['tokens']:,} | "
                     f"{m['train_flops']:.3g} | {m['eval_loss']:.4f} | {m['eval_ppl']:.2f} | "
                     f"{fmt(m['kl_to_next'])} | {fmt(m['kl_from_next'])} | {_acceptance_cell(m.get('draft_acceptance'))} |")
    if any(m.get("draft_acceptance") for m in report["members"]):
        a = next(m["draft_acceptance"] for m in report["members"] if m.get("draft_acceptance"))
        lines += ["", f"Draft acceptance: the fraction of this member's speculative draft tokens (gamma={a['gamma']}) "
                  f"that the next member accepts, on {a['prompts']} held-out prompts x {a['new_tokens']} new tokens "
                  "(jaxgrow/serve/speculative.py)."]
    if any(m.get("epochs") is not None for m in report["members"]):
        lines += ["", "Epochs (passes over the training stream seen by each member's weights; a progressive member "
                  "counts its whole lineage): " + ", ".join(f"{m['name']} {m['epochs']:.2f}" for m in report["members"]
                                                            if m.get("epochs") is not None)]
    if report.get("goodput"):

        lines += ["", goodput_markdown(report["goodput"])]
    lines += ["", "## Plots", ""]
    for name, title in PLOTS.items():  # written next to report.md by `write`
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)


def _acceptance_cell(a: dict | None) -> str:
    return "—" if not a else f"{a['temperature_0']:.3f} / {a['temperature_1']:.3f}"


def plot_eval_vs_flops(series: dict[str, dict[str, list[tuple[float, float]]]], path: Path, title: str) -> None:
    """series: label -> member -> [(cumulative FLOPs, eval loss)]; one colour per label, one
    segment per member (an independent member restarts from scratch, so segments do not join)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, members) in enumerate(series.items()):
        for j, points in enumerate(members.values()):
            if points:
                x, y = zip(*points)
                ax.plot(x, y, marker=".", color=colours[i % len(colours)], label=label if j == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative train FLOPs")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lr(stages: list, schedules: list, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for s, sched in zip(stages, schedules):
        steps = np.arange(s.steps)
        ax.plot(offset + steps, [float(v) for v in sched(steps)], label=s.name)
        offset += s.steps
    ax.set_xlabel("step (all stages)")
    ax.set_ylabel("learning rate")
    ax.set_title("LR schedule per stage (each re-warms to its own peak)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eval_series(metrics: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """member -> [(cumulative train FLOPs, eval loss)] from metrics.jsonl records."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in metrics:
        if "eval_loss" in r:
            series.setdefault(r["member"], []).append((r["train_flops"], r["eval_loss"]))
    return series


def _readable(path: Any) -> dict | None:
    """A JSON source of report.md, or None when it is missing or damaged (its section is left out; the writers
    rebuild report.json and set a damaged eval.json aside)."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        log.warning("%s is damaged; its section of report.md is left out", path)
        return None
    return value if isinstance(value, dict) else None


def render_markdown(workdir: Path) -> None:
    """report.md from report.json and eval.json (whichever exist), each section from its source."""
    from jaxgrow.eval.benchmarks import results as bench_results  # noqa: PLC0415

    workdir = storage.join(workdir)
    sections = []
    report_json, eval_json = _readable(workdir / "report.json"), _readable(workdir / "eval.json")
    sections.append(markdown(report_json) if report_json is not None else "# jaxgrow family report\n")
    if eval_json is not None:
        table = bench_results.markdown_table(eval_json)
        if table:
            sections.append("## Benchmarks\n\n" + table)
    storage.atomic_write_text(workdir / "report.md", "\n".join(s.rstrip("\n") + "\n" for s in sections))


def update_eval_json(workdir: Path, update: dict, samples: dict | None = None, **fields) -> dict:
    """The one writer of W/eval.json: merges `update` ({member: {key: value}}; benchmark suites merge task by task,
    so other suites, tasks and members are kept) and top-level `fields` (e.g. a convention string) into it, writes it
    atomically, writes eval_samples/<member>/<task>.jsonl for `samples` ({(member, task): [record]}), and re-renders
    report.md (process 0 only). Returns the merged eval.json."""
    import jax  # noqa: PLC0415

    from jaxgrow.eval.benchmarks import results as bench_results  # noqa: PLC0415

    merged = dict(bench_results.merge_eval_json(workdir, update), **fields)
    if jax.process_index() != 0:
        return merged
    storage.atomic_write_text(storage.join(workdir, "eval.json"), json.dumps(merged, indent=2))
    for (member, task), records in (samples or {}).items():
        path = storage.join(workdir, "eval_samples", member, f"{task}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    render_markdown(workdir)  # every section from its JSON source: the Benchmarks one from eval.json
    return merged


def write(workdir: Path, report: dict, stages: list, schedules: list) -> None:
    workdir = storage.join(workdir)
    storage.atomic_write_text(workdir / "report.json", json.dumps(report, indent=2))
    render_markdown(workdir)
    write_plots(workdir, report, stages, schedules)


def write_plots(workdir: Path, report: dict, stages: list, schedules: list) -> None:
    workdir = storage.join(workdir)
    per_member = eval_series(read_metrics(workdir))
    with storage.local_output(workdir / "eval_loss_vs_flops.png") as path:  # matplotlib writes local files
        plot_eval_vs_flops({m: {m: pts} for m, pts in per_member.items()}, path,
                           f"held-out loss vs cumulative FLOPs ({report['mode']})")
    with storage.local_output(workdir / "lr_schedule.png") as path:
        plot_lr(stages, schedules, path)
