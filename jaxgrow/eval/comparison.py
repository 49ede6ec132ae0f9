"""The reproduction's comparison: per-seed results of every arm aggregated into means with 95%
intervals, and the paper's claims decided on paired-by-seed differences (experiments/reproduce_paper.py
runs the arms; this module only reads their report.json / eval.json contents).

`compare(results, seeds)` takes results[arm][seed] = {"report": report.json, "eval": eval.json} and
returns the comparison.json dict; `markdown` and `plot` render it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


# Claim 1 (the paper's headline): at least this much compute saved with every member within this relative loss
# of its independent twin.
MIN_FLOPS_SAVED = 0.25
QUALITY_MARGIN = 0.005




def _flatten(prefix: str, node, out: dict) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = node


def member_metrics(run: dict, i: int, name: str) -> dict:
    """Every numeric metric of member i in one run: the report's (eval_loss, epochs, KL, ...) and every leaf of
    its eval.json entry (downstream tasks as `tasks/<task>/<metric>`, and whatever a benchmark suite adds)."""
    m = run["report"]["members"][i]
    out = {k: m.get(k) for k in ("eval_loss", "epochs", "kl_to_next", "kl_from_next", "eval_ppl")}
    for t in ("temperature_0", "temperature_1"):  # this member drafting for the next (jaxgrow/serve/speculative.py)
        out[f"draft_acceptance/{t}"] = (m.get("draft_acceptance") or {}).get(t)
    flat: dict = {}
    _flatten("", {k: v for k, v in run["eval"]["members"].get(name, {}).items() if k != "eval_loss"}, flat)
    out.update(flat)
    return out


def _summ(values_by_seed: dict, seeds: list) -> dict:
    from jaxgrow.eval import stats  # noqa: PLC0415

    return stats.mean_ci([values_by_seed[s] for s in seeds])


def _claim(name: str, statement: str, diff: dict, claim_sign: int, *, extra_ok: bool = True, margin: float = 0.0,
           detail: dict | None = None) -> dict:
    """One claim: `diff` is the mean_ci of a per-seed paired difference; the claim says diff - margin has
    sign claim_sign. extra_ok=False (a deterministic precondition failed) makes it not_met."""
    from jaxgrow.eval import stats  # noqa: PLC0415

    shifted = dict(diff)
    if diff.get("ci95") is not None:
        shifted["ci95"] = [diff["ci95"][0] - margin, diff["ci95"][1] - margin]
    verdict = stats.verdict(shifted, claim_sign) if extra_ok else "not_met"
    return {"name": name, "statement": statement, "verdict": verdict, "mean_paired_difference": diff["mean"],
            "ci95": diff["ci95"], "n_seeds": diff["n"], "per_seed": diff["values"], "margin": margin, **(detail or {})}


def compare(results: dict, seeds: list) -> dict:
    """results[arm][seed] -> the comparison dict (see the module docstring)."""
    from jaxgrow.eval import stats  # noqa: PLC0415

    arms = list(results)
    first = results[arms[0]][seeds[0]]
    names = [m["name"] for m in first["report"]["members"]]
    total = {a: results[a][seeds[0]]["report"]["total_train_flops"] for a in arms}
    baseline = total.get("independent")
    saved = {a: (1.0 - t / baseline) if baseline else None for a, t in total.items()}

    per_seed_mean_loss = {a: {s: float(np.mean([m["eval_loss"] for m in results[a][s]["report"]["members"]]))
                              for s in seeds} for a in arms}
    per_seed_kl = {a: {s: float(np.mean([m["kl_to_next"] for m in results[a][s]["report"]["members"][:-1]]))
                       for s in seeds} for a in arms}
    # mean over adjacent pairs of the draft acceptance rate (a smaller member drafting for the next), per temperature
    per_seed_accept = {t: {a: {s: (mean_draft_acceptance(results[a][s]["report"]["members"]) or {}).get(t)
                               for s in seeds} for a in arms} for t in ("temperature_0", "temperature_1")}
    arm_summary = {a: {"seeds": seeds, "total_train_flops": total[a], "flops_saved_fraction": saved[a],
                       "mean_eval_loss": _summ(per_seed_mean_loss[a], seeds),
                       "mean_adjacent_kl": _summ(per_seed_kl[a], seeds),
                       "mean_draft_acceptance": {t: _summ(per_seed_accept[t][a], seeds)
                                                 if None not in per_seed_accept[t][a].values() else None
                                                 for t in per_seed_accept},
                       "lr_rule": results[a][seeds[0]]["report"].get("lr_rule"),
                       "expansion": results[a][seeds[0]]["report"].get("expansion")} for a in arms}

    members = []
    for i, name in enumerate(names):
        entry = {"name": name, "arms": {}}
        for a in arms:
            agg = stats.aggregate_metrics([member_metrics(results[a][s], i, name) for s in seeds])
            row = {"train_flops": results[a][seeds[0]]["report"]["members"][i]["train_flops"]}
            for metric, summary in agg.items():
                row[f"{metric}_mean"] = summary["mean"]
                row[f"{metric}_ci95"] = summary["ci95"]
            row["epochs"] = agg["epochs"]["mean"] if "epochs" in agg else None
            entry["arms"][a] = row
        members.append(entry)

    claims = []
    if "progressive" in arms and "independent" in arms:
        for arm in ("progressive", "paper_operator"):
            if arm not in arms:
                continue
            # worst member (relative loss vs its independent twin), per seed; the first member is the same run
            worst = {s: max((results[arm][s]["report"]["members"][i]["eval_loss"]
                             / results["independent"][s]["report"]["members"][i]["eval_loss"] - 1.0)
                            for i in range(1, len(names))) if len(names) > 1 else 0.0 for s in seeds}
            diff = stats.mean_ci([worst[s] for s in seeds])
            claims.append(_claim(
                f"compute_saved_at_comparable_quality ({arm})",
                f"{arm} saves >= {MIN_FLOPS_SAVED:.0%} of the independent family's train FLOPs with every member's "
                f"held-out loss within {QUALITY_MARGIN:.1%} of (or below) its independent twin; difference = max over "
                f"members of loss({arm})/loss(independent) - 1, paired by seed",
                diff, -1, extra_ok=saved[arm] is not None and saved[arm] >= MIN_FLOPS_SAVED, margin=QUALITY_MARGIN,
                detail={"flops_saved_fraction": saved[arm]}))
    if "progressive" in arms and "fixed_lr" in arms:
        diff = stats.paired([per_seed_mean_loss["progressive"][s] for s in seeds],
                            [per_seed_mean_loss["fixed_lr"][s] for s in seeds])
        claims.append(_claim("adaptive_lr_better_than_fixed",
                             "size-adaptive peak LR gives a lower mean held-out loss over the members than one fixed "
                             "LR; difference = mean loss(progressive) - mean loss(fixed_lr), paired by seed",
                             diff, -1))
    if "independent" in arms:
        for arm in ("progressive", "consistency"):
            if arm not in arms:
                continue
            diff = stats.paired([per_seed_kl[arm][s] for s in seeds], [per_seed_kl["independent"][s] for s in seeds])
            claims.append(_claim(f"lower_adjacent_kl ({arm})",
                                 f"{arm} has a lower mean adjacent KL(p_k || p_k+1) than the independent family; "
                                 f"difference = KL({arm}) - KL(independent), paired by seed", diff, -1))
            for t, by_arm in per_seed_accept.items():  # the same claim seen by speculative decoding
                if None in by_arm[arm].values() or None in by_arm["independent"].values():
                    continue
                diff = stats.paired([by_arm[arm][s] for s in seeds], [by_arm["independent"][s] for s in seeds])
                claims.append(_claim(f"higher_draft_acceptance_{t} ({arm})",
                                     f"{arm}'s members, each drafting for the next, have a higher mean speculative "
                                     f"acceptance rate at {t.replace('_', ' ')} than the independent family's; "
                                     f"difference = acceptance({arm}) - acceptance(independent), paired by seed",
                                     diff, +1))
    return {
        "seeds": seeds, "arms": arm_summary, "members": members, "claims": claims,
        "flops_saved_fraction": saved, "total_train_flops": total,
        "kl_definition": "mean over adjacent pairs (k, k+1) of per-token KL(p_k || p_k+1) on the held-out batches, nats",
        "interval": "95% Student-t interval of the mean over seeds (null with one seed); claims pair arms by seed",
        "verdict_rule": "met when the interval of the paired difference lies wholly on the claimed side (after the "
                        "margin); not_met when wholly on the other side or a precondition fails; else inconclusive",
    }


def markdown(c: dict) -> str:
    from jaxgrow.eval import stats  # noqa: PLC0415

    arms = list(c["arms"])
    f = stats.fmt
    out = [f"# Reproduction: progressive vs independent family ({len(c['seeds'])} seed(s): "
           f"{', '.join(map(str, c['seeds']))}; ± is the half-width of the 95% t-interval)", "",
           "| arm | total train FLOPs | FLOPs saved vs independent | mean adjacent KL | mean eval loss "
           "| mean draft acceptance T=0 | T=1 |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for a in arms:
        s = c["arms"][a]
        saved = s["flops_saved_fraction"]
        out.append(f"| {a} | {s['total_train_flops']:.4g} | {'—' if saved is None else f'{100 * saved:.1f}%'} | "
                   f"{f(s['mean_adjacent_kl'])} | {f(s['mean_eval_loss'])} | "
                   + " | ".join("—" if not s["mean_draft_acceptance"].get(t) else f(s["mean_draft_acceptance"][t], 3)
                                for t in ("temperature_0", "temperature_1")) + " |")
    out += ["", "Held-out loss per member (nats/token):", "",
            "| member | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]

    def cell(row: dict, metric: str, digits: int = 4) -> str:
        return f({"mean": row.get(f"{metric}_mean"), "ci95": row.get(f"{metric}_ci95")}, digits)

    for m in c["members"]:
        out.append(f"| {m['name']} | " + " | ".join(cell(m["arms"][a], "eval_loss") for a in arms) + " |")
    out += ["", "Epochs (passes over the training stream seen by each member's weights):", "",
            "| member | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for m in c["members"]:
        out.append(f"| {m['name']} | " + " | ".join(
            "—" if m["arms"][a]["epochs"] is None else f"{m['arms'][a]['epochs']:.2f}" for a in arms) + " |")
    from jaxgrow.eval.benchmarks import tasks as bench_tasks  # noqa: PLC0415

    primary = {f"{suite}/{t}/{bench_tasks.PRIMARY[t]}" for suite, ts in bench_tasks.SUITES.items() for t in ts}
    downstream = sorted({k[:-5] for m in c["members"] for r in m["arms"].values() for k in r
                         if k.endswith("_mean") and not k.endswith("/n_mean")
                         and (k.startswith("tasks/") or k[:-5] in primary)})
    for metric in downstream:
        out += ["", f"`{metric}` per member:", "", "| member | " + " | ".join(arms) + " |",
                "|---|" + "---:|" * len(arms)]
        for m in c["members"]:
            out.append(f"| {m['name']} | " + " | ".join(cell(m["arms"][a], metric, 3) for a in arms) + " |")
    out += ["", "Claims (difference paired by seed; met only when its 95% interval excludes the opposite sign):", "",
            "| claim | verdict | mean paired difference | 95% interval | margin |", "|---|---|---:|---:|---:|"]
    for cl in c["claims"]:
        ci = "—" if cl["ci95"] is None else f"[{cl['ci95'][0]:+.4f}, {cl['ci95'][1]:+.4f}]"
        out.append(f"| {cl['name']} | **{cl['verdict']}** | {cl['mean_paired_difference']:+.4f} | {ci} | "
                   f"{cl['margin']:g} |")
    return "\n".join(out) + "\n"


def plot(c: dict, path: Path) -> None:
    """Final held-out loss of every member vs the cumulative train FLOPs that produced it, mean ± 95% CI."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import NullFormatter  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, a in enumerate(c["arms"]):
        xs, ys, lo, hi, cum = [], [], [], [], 0.0
        for m in c["members"]:
            row = m["arms"][a]
            cum = cum + row["train_flops"] if c["arms"][a]["expansion"] else row["train_flops"]
            ci = row.get("eval_loss_ci95") or [row["eval_loss_mean"]] * 2
            xs.append(cum * (1 + 0.015 * k))  # small offsets keep overlapping bars readable
            ys.append(row["eval_loss_mean"])
            lo.append(row["eval_loss_mean"] - ci[0])
            hi.append(ci[1] - row["eval_loss_mean"])
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=a,
                    linestyle="-" if c["arms"][a]["expansion"] else ":")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on short ranges
    ax.set_xlabel("train FLOPs that produced the member (cumulative over a progressive lineage)")
    ax.set_ylabel("held-out loss (nats/token), mean ± 95% CI")
    ax.set_title(f"members' final held-out loss, {len(c['seeds'])} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mean_draft_acceptance(report_members: Sequence[dict]) -> dict | None:
    """{'temperature_0', 'temperature_1'}: mean over adjacent pairs of report.json's draft_acceptance
    (None when the report has none, e.g. written before acceptance was measured)."""
    rates = [m["draft_acceptance"] for m in report_members if m.get("draft_acceptance")]
    if not rates:
        return None
    return {k: float(np.mean([r[k] for r in rates])) for k in ("temperature_0", "temperature_1")}
