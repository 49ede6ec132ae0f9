"""What consistency costs: every knob that plausibly trades held-out loss for adjacent-member consistency, swept on
the same seeds, each setting's mean held-out loss and mean adjacent KL (forward, and at equal quality gap) against
the independent family's, on one plot.

    python experiments/kl_tradeoff.py --workdir W_SWEEP [--reference W_REF ...] [--out experiments/results/cpu/kl_tradeoff]

W_SWEEP is a reproduce_paper.py workdir whose arms are the settings (e.g. `progressive`, `fixed_lr:0.004`,
`consistency:0.5:0.5`, `distil_parent:1`); arms missing there (the `independent` reference, `progressive`) are read
from W_REF, with the same seeds. Per setting: the knob and its value, total train FLOPs (teacher forwards included),
mean held-out loss and mean adjacent KL(p_k || p_k+1) with 95% intervals over seeds, their paired differences to the
independent family and to plain progressive training, and the arm effect on KL at equal quality gap (the OLS of
comparison.kl_claims). The verdict names the setting with the lowest mean loss among those whose KL difference to
independent has its whole interval below 0 (lower KL than independent), and what it costs in loss against plain
progressive training; if none, the setting that came closest. Writes <out>.json and <out>.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jaxgrow.eval import comparison, stats


def load(workdir: Path, references: list[Path]) -> dict:
    """results[arm][seed] = {"report": report.json} for every finished arm-seed (the sweep's first, then each
    W_REF's in turn)."""
    results: dict = {}
    owner: dict = {}
    for root in [workdir] + list(references):
        for arm_dir in sorted((root / "arms").glob("*")):
            arm = arm_dir.name
            if arm in results and root is not owner.get(arm, root):
                continue  # the first workdir that holds an arm is its source
            owner.setdefault(arm, root)
            for seed_dir in sorted(arm_dir.glob("seed*")):
                report = seed_dir / "report.json"
                if report.exists():
                    results.setdefault(arm, {})[int(seed_dir.name[4:])] = {"report": json.loads(report.read_text())}
    return results


def knob(arm: str) -> tuple[str, str]:
    """('consistency weight / fraction', '0.5 / 0.5') for consistency_0.5_0.5 (arm directories spell ':' as '_')."""
    kind, *params = arm.split("_") if arm.startswith(("consistency_", "distil_parent_", "fixed_lr_")) else (arm,)
    if arm.startswith("distil_parent_"):
        return "distillation from the parent (constant weight)", arm.rsplit("_", 1)[1]
    if kind == "consistency":
        return "consistency weight / fraction", " / ".join(params)
    if kind == "fixed":
        return "fixed re-warm peak", params[-1]
    return {"progressive": "size-adjusted re-warm peak (tuned)", "fixed_lr": "fixed re-warm peak (s's tuned)",
            "independent": "independent (reference)",
            "pruned": "pruned from the largest and distilled (the other direction)"}.get(arm, arm), ""


def summarise(results: dict, seeds: list[int]) -> dict:
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    loss = {a: [mean([m["eval_loss"] for m in results[a][s]["report"]["members"]]) for s in seeds] for a in results}
    kl = {a: [mean([m["kl_to_next"] for m in results[a][s]["report"]["members"][:-1]]) for s in seeds] for a in results}
    out = {}
    for arm in results:
        name, value = knob(arm)
        row = {"knob": name, "value": value, "seeds": seeds,
               "total_train_flops": float(np.mean([results[arm][s]["report"]["total_train_flops"] for s in seeds])),
               "mean_eval_loss": stats.mean_ci(loss[arm]), "mean_adjacent_kl": stats.mean_ci(kl[arm])}
        for ref in ("independent", "progressive"):
            if ref in results and arm != ref:
                row[f"loss_minus_{ref}"] = _short(stats.paired(loss[arm], loss[ref]))
                row[f"kl_minus_{ref}"] = _short(stats.paired(kl[arm], kl[ref]))
        if "independent" in results and arm != "independent":
            gap = [c for c in comparison.kl_claims(results, seeds, arm) if c["name"].endswith("at_equal_gap")]
            if gap:
                row["kl_at_equal_gap_minus_independent"] = {"mean": gap[0]["mean_paired_difference"],
                                                            "ci95": gap[0]["ci95"]}
        out[arm] = row
    return out


def _short(d: dict) -> dict:
    return {"mean": d["mean"], "ci95": d["ci95"]}


def verdict(rows: dict) -> dict:
    below = [a for a, r in rows.items() if r.get("kl_minus_independent", {}).get("ci95")
             and r["kl_minus_independent"]["ci95"][1] < 0]
    if below:
        best = min(below, key=lambda a: rows[a]["mean_eval_loss"]["mean"])
        cost = rows[best].get("loss_minus_progressive")
        return {"cheapest_below_independent": best, "loss_cost_vs_progressive": cost,
                "statement": f"{best} ({rows[best]['knob']} {rows[best]['value']}) is the cheapest setting whose "
                             "adjacent-KL interval lies below the independent family's; against plain progressive "
                             f"training it costs {_fmt(cost)} nats of mean held-out loss"}
    candidates = [a for a, r in rows.items() if "kl_minus_independent" in r]
    if not candidates:
        return {"statement": "no setting has an independent reference with the same seeds"}
    closest = min(candidates, key=lambda a: rows[a]["kl_minus_independent"]["mean"])
    return {"cheapest_below_independent": None, "closest": closest,
            "statement": f"no setting's KL interval lies below the independent family's; {closest} "
                         f"({rows[closest]['knob']} {rows[closest]['value']}) came closest: KL - independent "
                         f"{_fmt(rows[closest]['kl_minus_independent'])}, loss - progressive "
                         f"{_fmt(rows[closest].get('loss_minus_progressive'))}"}


def _fmt(d: dict | None) -> str:
    if not d:
        return "n/a"
    ci = d.get("ci95")
    return f"{d['mean']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")


def plot(rows: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(8, 5))
    ref = rows.get("independent")
    if ref:
        lo, hi = ref["mean_adjacent_kl"]["ci95"] or (ref["mean_adjacent_kl"]["mean"],) * 2
        ax.axhspan(lo, hi, color="0.85", label="independent: 95% interval of KL")
    for arm, r in rows.items():
        x, y = r["mean_eval_loss"], r["mean_adjacent_kl"]
        xerr = None if x["ci95"] is None else [[x["mean"] - x["ci95"][0]], [x["ci95"][1] - x["mean"]]]
        yerr = None if y["ci95"] is None else [[y["mean"] - y["ci95"][0]], [y["ci95"][1] - y["mean"]]]
        style = dict(fmt="s", color="black") if arm == "independent" else dict(fmt="o")
        ax.errorbar(x["mean"], y["mean"], xerr=xerr, yerr=yerr, capsize=3, label=arm, **style)
    ax.set_xlabel("mean held-out loss over the members (nats; lower is better)")
    ax.set_ylabel("mean adjacent KL(p_k || p_k+1) (nats)")
    ax.set_title("What consistency costs: KL against loss, mean ± 95% CI over seeds")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--reference", type=Path, nargs="*", default=[],
                        help="reproduce_paper.py workdirs holding the reference arms (independent, progressive, ...)")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/cpu/kl_tradeoff"))
    args = parser.parse_args()
    results = load(args.workdir, args.reference)
    seeds = sorted(set.intersection(*[set(v) for v in results.values()])) if results else []
    if len(seeds) < 2:
        raise SystemExit(f"error: the settings share {len(seeds)} finished seed(s); every setting needs >= 2 of the "
                         "same seeds (and the independent reference them too)")
    rows = summarise(results, seeds)
    out = {"seeds": seeds, "settings": rows, "verdict": verdict(rows),
           "kl_definition": "mean over adjacent pairs (k, k+1) of per-token KL(p_k || p_k+1) on the held-out batches"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2))
    plot(rows, args.out.with_suffix(".png"))
    for arm, r in rows.items():
        print(f"{arm:28s} loss {_fmt(r['mean_eval_loss'])}  KL {_fmt(r['mean_adjacent_kl'])}  "
              f"KL-ind {_fmt(r.get('kl_minus_independent'))}  loss-prog {_fmt(r.get('loss_minus_progressive'))}")
    print(out["verdict"]["statement"])
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
