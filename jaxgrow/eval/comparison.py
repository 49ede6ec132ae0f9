"""The reproduction's comparison: per-seed results of every arm aggregated into means with 95% intervals, and the
paper's three claims decided in the paper's own contrasts on paired-by-seed differences (experiments/reproduce_paper.py
runs the arms; this module only reads their report.json / eval.json contents).

Arms (names as reproduce_paper.py runs them): `progressive` (progressive training, each stage re-warming to the
size-adjusted peak of the rule fitted on grown models), `fixed_lr` (progressive, one fixed re-warm peak for every
stage), `independent` (every size from scratch at its own tuned peak), `paper_operator` (the paper's bert2BERT
operator), `consistency` (progressive plus a KL term to the previous member), `pruned` (the largest member from
scratch, every smaller one pruned from it and distilled from it: the other direction).

Claims (each paired by seed, with a 95% t-interval, the minimum detectable effect and the seeds that would decide it):
    comparable_quality_at_lower_compute   fixed_lr vs independent: every member's held-out loss within +0.5% of its
                                          independent twin (non-inferiority: met when the upper bound of the worst
                                          member's relative difference is below the margin); FLOPs saved beside it
    adjusted_lr_beats_independent         progressive vs independent: lower mean held-out loss over the members
    adjusted_beats_fixed                  progressive vs fixed_lr (not_applicable when their peaks are the same)
    lower_adjacent_kl                     progressive vs independent: mean adjacent KL(p_k || p_k+1), forward and
                                          reverse, per pair; and `lower_adjacent_kl_at_equal_gap`: the arm effect of
                                          KL ~ arm + Δloss + pair over every adjacent pair and seed (Δloss: the
                                          pair's held-out loss difference, which drives KL by itself)
    higher_draft_acceptance_temperature_*  the same consistency seen by speculative decoding
    pruned_vs_progressive_at_equal_flops  pruned vs progressive: lower mean held-out loss over the members at equal
                                          total train FLOPs (which direction builds the cheaper family)
A verdict judges the method, not the config: FLOPs saved follow from the members' sizes and are reported, not judged.

`compare(results, seeds)` takes results[arm][seed] = {"report": report.json, "eval": eval.json} and returns the
comparison.json dict; `markdown` and `plot` render it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from jaxgrow.eval import stats


# Non-inferiority margin of the compute claim: every member within this relative loss of its independent twin.
QUALITY_MARGIN = 0.005
# Chance level of multiple-choice metrics (generated continuation tasks have 4 choices).
CHANCE = {"hellaswag": 0.25, "arc_easy": 0.25, "arc_challenge": 0.25, "mmlu": 0.25, "piqa": 0.5, "winogrande": 0.5,
          "tasks": 0.25}


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
    return stats.mean_ci([values_by_seed[s] for s in seeds])


def _claim(name: str, arms: tuple[str, str], statement: str, diff: dict, claim_sign: int, *, margin: float = 0.0,
           detail: dict | None = None, not_applicable: str | None = None) -> dict:
    """One claim: `diff` is the mean_ci of a per-seed paired difference (or an estimate with an interval); the claim
    says diff - margin has sign claim_sign. not_applicable: the reason the arms are the same run by construction."""
    shifted = dict(diff)
    if diff.get("ci95") is not None:
        shifted["ci95"] = [diff["ci95"][0] - margin, diff["ci95"][1] - margin]
    verdict = "not_applicable" if not_applicable else stats.verdict(shifted, claim_sign)
    n = diff.get("n", 0)
    std = diff.get("std")
    mde = diff.get("mde", stats.min_detectable_effect(std, n))
    out = {"name": name, "arms": list(arms), "statement": statement, "verdict": verdict,
           "mean_paired_difference": diff["mean"], "ci95": diff["ci95"], "n_seeds": n, "per_seed": diff.get("values"),
           "margin": margin, "min_detectable_effect": mde,
           "seeds_to_decide": None if not_applicable or verdict != "inconclusive"
           else stats.seeds_to_decide(diff["mean"], std, margin)}
    if not_applicable:
        out["reason"] = not_applicable
    out.update(detail or {})
    return out


def _members(results: dict, arm: str, seed) -> list[dict]:
    return results[arm][seed]["report"]["members"]


def _same_peaks(results: dict, a: str, b: str, seeds: list) -> bool:
    """Whether two progressive arms re-warm every member to the same peak with the same expansion (then they are
    the same run by construction)."""
    ra, rb = results[a][seeds[0]]["report"], results[b][seeds[0]]["report"]
    peaks_a = [m.get("peak_lr") for m in ra["members"]]
    peaks_b = [m.get("peak_lr") for m in rb["members"]]
    return None not in peaks_a and peaks_a == peaks_b and ra.get("expansion") == rb.get("expansion")


def quality_claim(results: dict, seeds: list, arm: str, saved: dict, name: str) -> dict:
    """Non-inferiority of every member of `arm` against its independent twin (members after the first: the first is
    trained from scratch the same way in every arm)."""
    names = [m["name"] for m in _members(results, arm, seeds[0])]
    rel = {i: [_members(results, arm, s)[i]["eval_loss"] / _members(results, "independent", s)[i]["eval_loss"] - 1.0
               for s in seeds] for i in range(len(names))}
    per_member = {names[i]: stats.mean_ci(v) for i, v in rel.items()}
    if len(names) < 2:
        return _claim(name, (arm, "independent"), "", stats.mean_ci([0.0] * len(seeds)), -1, margin=QUALITY_MARGIN,
                      not_applicable="a one-member family has no grown member to compare")
    worst = stats.mean_ci([max(rel[i][k] for i in range(1, len(names))) for k in range(len(seeds))])
    return _claim(
        name, (arm, "independent"),
        f"{arm} (progressive) matches independent training at lower compute: every grown member's held-out loss "
        f"within {QUALITY_MARGIN:.1%} of its independent twin; difference = max over grown members of "
        f"loss({arm})/loss(independent) - 1, paired by seed; met when the interval's upper bound is below the margin",
        worst, -1, margin=QUALITY_MARGIN,
        detail={"flops_saved_fraction": saved.get(arm),
                "per_member_relative_difference": {n: {"mean": v["mean"], "ci95": v["ci95"]}
                                                   for n, v in per_member.items()}})


def mean_loss_claim(results: dict, seeds: list, a: str, b: str, name: str, statement: str,
                    not_applicable: str | None = None) -> dict:
    """Mean held-out loss over the members, arm a - arm b, paired by seed (claim: negative); per member too."""
    names = [m["name"] for m in _members(results, a, seeds[0])]
    mean = {arm: [float(np.mean([m["eval_loss"] for m in _members(results, arm, s)])) for s in seeds]
            for arm in (a, b)}
    per_member = {n: stats.paired([_members(results, a, s)[i]["eval_loss"] for s in seeds],
                                  [_members(results, b, s)[i]["eval_loss"] for s in seeds]) for i, n in enumerate(names)}
    return _claim(name, (a, b), statement, stats.paired(mean[a], mean[b]), -1, not_applicable=not_applicable,
                  detail={"per_member_difference": {n: {"mean": v["mean"], "ci95": v["ci95"]}
                                                    for n, v in per_member.items()}})


def pruned_claim(results: dict, seeds: list) -> dict:
    """pruned_vs_progressive_at_equal_flops: the mean held-out loss over the members of a pruned family (the largest
    from scratch, the others pruned from it and distilled) minus a progressive family's, paired by seed. Both cost
    what their largest member alone does under the paper's cost rule (the pruned family gives budget.distill_share
    of it to the distillation stages), so the two compare at equal total train FLOPs; the claim records both totals
    and is not applicable when they differ by more than 2%."""
    totals = {a: [results[a][s]["report"]["total_train_flops"] for s in seeds] for a in ("pruned", "progressive")}
    ratio = float(np.mean(totals["pruned"]) / np.mean(totals["progressive"]))
    claim = mean_loss_claim(
        results, seeds, "pruned", "progressive", "pruned_vs_progressive_at_equal_flops",
        "a family pruned down from its largest member and distilled from it reaches a lower mean held-out loss than "
        "a progressively grown family at equal total train FLOPs: difference = loss(pruned) - loss(progressive), "
        "paired by seed (negative: pruning down wins; positive: growing up wins)",
        not_applicable=(f"the families' total train FLOPs differ by {abs(ratio - 1):.1%}, not equal"
                        if abs(ratio - 1) > 0.02 else None))
    claim["total_train_flops"] = {a: float(np.mean(v)) for a, v in totals.items()}
    claim["flops_ratio_pruned_over_progressive"] = ratio
    return claim


def kl_claims(results: dict, seeds: list, arm: str, suffix: str = "") -> list[dict]:
    """lower_adjacent_kl (raw, forward with reverse and per-pair detail) and lower_adjacent_kl_at_equal_gap (the arm
    effect of KL ~ arm + Δloss + pair), arm vs independent."""
    n_pairs = len(_members(results, arm, seeds[0])) - 1
    if n_pairs < 1:
        return []

    def kls(a, s, key):
        return [m[key] for m in _members(results, a, s)[:-1]]

    out = []
    detail = {}
    for key, direction in (("kl_to_next", "forward"), ("kl_from_next", "reverse")):
        if any(k is None for a in (arm, "independent") for s in seeds for k in kls(a, s, key)):
            continue
        mean = {a: [float(np.mean(kls(a, s, key))) for s in seeds] for a in (arm, "independent")}
        per_pair = {f"{i}->{i + 1}": stats.paired([kls(arm, s, key)[i] for s in seeds],
                                                  [kls("independent", s, key)[i] for s in seeds]) for i in range(n_pairs)}
        detail[direction] = {"mean": stats.paired(mean[arm], mean["independent"]),
                             "per_pair": {p: {"mean": v["mean"], "ci95": v["ci95"]} for p, v in per_pair.items()}}
        detail[direction]["mean"].pop("values", None)
    fwd = detail.get("forward")
    if fwd is None:
        return []
    raw = stats.paired([float(np.mean(kls(arm, s, "kl_to_next"))) for s in seeds],
                       [float(np.mean(kls("independent", s, "kl_to_next"))) for s in seeds])
    out.append(_claim(
        "lower_adjacent_kl" + suffix, (arm, "independent"),
        f"{arm}'s adjacent members are more consistent than the independent family's: mean over adjacent pairs of "
        f"KL(p_k || p_k+1) on held-out batches, difference = KL({arm}) - KL(independent), paired by seed (reverse "
        "KL and each pair in `kl`)", raw, -1, detail={"kl": detail}))
    # at equal quality gap: a larger loss gap between adjacent members means a larger KL by itself
    for key, direction in (("kl_to_next", "forward"), ("kl_from_next", "reverse")):
        if direction not in detail:
            continue
        y, is_arm, gap, pairs = [], [], [], []
        for a in (arm, "independent"):
            for s in seeds:
                ms = _members(results, a, s)
                for i in range(n_pairs):
                    y.append(ms[i][key])
                    is_arm.append(1.0 if a == arm else 0.0)
                    gap.append(ms[i]["eval_loss"] - ms[i + 1]["eval_loss"])
                    pairs.append(i)
        columns = {"arm": is_arm, "delta_loss": gap}
        for i in range(1, n_pairs):
            columns[f"pair_{i}"] = [1.0 if p == i else 0.0 for p in pairs]
        fit = stats.ols(y, columns)
        effect = fit["arm"]
        ci = effect["ci95"]
        diff = {"mean": effect["estimate"], "ci95": ci, "n": len(seeds), "std": None,
                "mde": stats.detectable_from_stderr(effect["stderr"], fit["df"])}
        if direction == "forward":
            claim = _claim(
                "lower_adjacent_kl_at_equal_gap" + suffix, (arm, "independent"),
                f"{arm}'s adjacent KL is lower than the independent family's at equal quality gap: the `arm` "
                "coefficient of KL(p_k || p_k+1) ~ arm + delta_loss + pair over every adjacent pair and seed "
                "(delta_loss = the pair's held-out loss difference; least squares, t-interval)", diff, -1,
                detail={"regression": {"forward": fit}})
            claim["seeds_to_decide"] = None
            out.append(claim)
        else:
            out[-1]["regression"]["reverse"] = fit
    return out


def acceptance_claims(results: dict, seeds: list, arm: str, per_seed_accept: dict) -> list[dict]:
    out = []
    for t, by_arm in per_seed_accept.items():  # the same consistency seen by speculative decoding
        if None in by_arm[arm].values() or None in by_arm["independent"].values():
            continue
        diff = stats.paired([by_arm[arm][s] for s in seeds], [by_arm["independent"][s] for s in seeds])
        out.append(_claim(f"higher_draft_acceptance_{t}" + ("" if arm == "progressive" else f" ({arm})"),
                          (arm, "independent"),
                          f"{arm}'s members, each drafting for the next, have a higher mean speculative acceptance "
                          f"rate at {t.replace('_', ' ')} than the independent family's; difference = "
                          f"acceptance({arm}) - acceptance(independent), paired by seed", diff, +1))
    return out


def compare(results: dict, seeds: list) -> dict:
    """results[arm][seed] -> the comparison dict (see the module docstring)."""
    arms = list(results)
    names = [m["name"] for m in results[arms[0]][seeds[0]]["report"]["members"]]
    total = {a: results[a][seeds[0]]["report"]["total_train_flops"] for a in arms}
    baseline = total.get("independent")
    saved = {a: (1.0 - t / baseline) if baseline else None for a, t in total.items()}
    # mean over adjacent pairs of the draft acceptance rate (a smaller member drafting for the next), per temperature
    per_seed_accept = {t: {a: {s: (mean_draft_acceptance(_members(results, a, s)) or {}).get(t) for s in seeds}
                           for a in arms} for t in ("temperature_0", "temperature_1")}
    return {
        "seeds": seeds, "arms": _arm_summary(results, seeds, total, saved, per_seed_accept),
        "members": _member_rows(results, seeds, names), "claims": _claims(results, seeds, saved, per_seed_accept),
        "flops_saved_fraction": saved, "total_train_flops": total,
        "kl_definition": "mean over adjacent pairs (k, k+1) of per-token KL(p_k || p_k+1) on the held-out batches, nats",
        "interval": "95% Student-t interval of the mean over seeds (null with one seed); claims pair arms by seed",
        "min_detectable_effect": "the paired difference a two-sided t-test at 5% detects with 80% power at the "
                                 "observed SD of the per-seed differences: (t_0.975 + t_0.8) * SD / sqrt(n)",
        "verdict_rule": "met when the interval of the paired difference lies wholly on the claimed side (after the "
                        "margin); not_met when wholly on the other side; not_applicable when the arms are the same run "
                        "by construction; else inconclusive (seeds_to_decide: seeds that would decide it at the "
                        "observed mean and SD)",
    }


def _arm_summary(results: dict, seeds: list, total: dict, saved: dict, per_seed_accept: dict) -> dict:
    out = {}
    for a in results:
        mean_loss = {s: float(np.mean([m["eval_loss"] for m in _members(results, a, s)])) for s in seeds}
        kls = {s: [m["kl_to_next"] for m in _members(results, a, s)[:-1]] for s in seeds}
        per_seed_kl = {s: float(np.mean(v)) if v and None not in v else None for s, v in kls.items()}
        out[a] = {"seeds": seeds, "total_train_flops": total[a], "flops_saved_fraction": saved[a],
                  "mean_eval_loss": _summ(mean_loss, seeds),
                  "mean_adjacent_kl": _summ(per_seed_kl, seeds) if None not in per_seed_kl.values()
                  else stats.mean_ci([]),
                  "mean_draft_acceptance": {t: _summ(per_seed_accept[t][a], seeds)
                                            if None not in per_seed_accept[t][a].values() else None
                                            for t in per_seed_accept},
                  "lr_rule": results[a][seeds[0]]["report"].get("lr_rule"),
                  "peak_lr": [m.get("peak_lr") for m in _members(results, a, seeds[0])],
                  "expansion": results[a][seeds[0]]["report"].get("expansion")}
    return out


def _member_rows(results: dict, seeds: list, names: list[str]) -> list[dict]:
    members = []
    for i, name in enumerate(names):
        entry = {"name": name, "arms": {}}
        for a in results:
            agg = stats.aggregate_metrics([member_metrics(results[a][s], i, name) for s in seeds])
            first_run = _members(results, a, seeds[0])[i]
            row = {"train_flops": first_run["train_flops"], "tokens": first_run.get("tokens"),
                   "non_embedding_params": first_run.get("non_embedding_params"), "peak_lr": first_run.get("peak_lr"),
                   "transition": first_run.get("transition_text")}
            for metric, summary in agg.items():
                row[f"{metric}_mean"] = summary["mean"]
                row[f"{metric}_ci95"] = summary["ci95"]
            row["epochs"] = agg["epochs"]["mean"] if "epochs" in agg else None
            entry["arms"][a] = row
        members.append(entry)
    return members


def _claims(results: dict, seeds: list, saved: dict, per_seed_accept: dict) -> list[dict]:
    arms = list(results)
    claims = []
    if "independent" in arms:
        if "fixed_lr" in arms:
            claims.append(quality_claim(results, seeds, "fixed_lr", saved, "comparable_quality_at_lower_compute"))
        if "progressive" in arms:
            claims.append(mean_loss_claim(
                results, seeds, "progressive", "independent", "adjusted_lr_beats_independent",
                "progressive training with the maximum LR adjusted by model size outperforms independent training: "
                "mean held-out loss over the members, difference = loss(progressive) - loss(independent), paired "
                "by seed (each member's difference in per_member_difference)"))
    if "progressive" in arms and "fixed_lr" in arms:
        same = _same_peaks(results, "progressive", "fixed_lr", seeds)
        claims.append(mean_loss_claim(
            results, seeds, "progressive", "fixed_lr", "adjusted_beats_fixed",
            "the size-adjusted re-warm peak beats one fixed peak for every stage: mean held-out loss over the "
            "members, difference = loss(progressive) - loss(fixed_lr), paired by seed",
            not_applicable="both arms re-warm every member to the same peak (e.g. lr.rule=constant), so they are the "
                           "same run" if same else None))
    if "pruned" in arms and "progressive" in arms:
        claims.append(pruned_claim(results, seeds))
    if "independent" in arms:
        for arm in ("progressive", "paper_operator", "consistency", "pruned"):
            if arm not in arms:
                continue
            if arm == "paper_operator":
                claims.append(quality_claim(results, seeds, arm, saved,
                                            "comparable_quality_at_lower_compute (paper_operator)"))
                continue
            claims += kl_claims(results, seeds, arm, "" if arm == "progressive" else f" ({arm})")
            claims += acceptance_claims(results, seeds, arm, per_seed_accept)
    return claims


def markdown(c: dict) -> str:
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
        chance = CHANCE.get(metric.split("/")[1]) if metric.split("/")[-1].startswith("acc") else None
        out += ["", f"`{metric}` per member" + (f" (chance {chance:g}; `≈chance` where the interval includes it)"
                                               if chance is not None else "") + ":", "",
                "| member | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
        for m in c["members"]:
            out.append(f"| {m['name']} | " + " | ".join(cell(m["arms"][a], metric, 3) + _chance_mark(m["arms"][a], metric, chance)
                                                        for a in arms) + " |")
    out += ["", "Claims (differences paired by seed; a claim is met only when its 95% interval lies on the claimed side "
            "of the margin; MDE = the difference detectable with 80% power at the observed SD; seeds to decide = "
            "seeds that would decide an inconclusive claim at its observed mean and SD):", "",
            "| claim | arms | verdict | mean difference | 95% interval | margin | MDE | seeds to decide |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for cl in c["claims"]:
        ci = "—" if cl["ci95"] is None else f"[{cl['ci95'][0]:+.4f}, {cl['ci95'][1]:+.4f}]"
        mde = "—" if cl.get("min_detectable_effect") is None else f"{cl['min_detectable_effect']:.4f}"
        out.append(f"| {cl['name']} | {' vs '.join(cl.get('arms', []))} | **{cl['verdict']}** | "
                   f"{cl['mean_paired_difference']:+.4f} | {ci} | {cl['margin']:g} | {mde} | "
                   f"{cl.get('seeds_to_decide') or '—'} |")
    for cl in c["claims"]:
        extra = []
        if cl.get("flops_saved_fraction") is not None:
            extra.append(f"FLOPs saved {100 * cl['flops_saved_fraction']:.1f}%")
        for key in ("per_member_relative_difference", "per_member_difference"):
            if cl.get(key):
                extra.append(", ".join(f"{n} {_signed(v)}" for n, v in cl[key].items()))
        if cl.get("kl"):
            for direction, d in cl["kl"].items():
                extra.append(f"{direction} KL: mean {_signed(d['mean'])}; per pair " +
                             ", ".join(f"{p} {_signed(v)}" for p, v in d["per_pair"].items()))
        if cl.get("regression"):
            for direction, fit in cl["regression"].items():
                extra.append(f"{direction}: arm {_signed({'mean': fit['arm']['estimate'], 'ci95': fit['arm']['ci95']})}, "
                             f"delta_loss {_signed({'mean': fit['delta_loss']['estimate'], 'ci95': fit['delta_loss']['ci95']})} "
                             f"(n={fit['n']}, df={fit['df']})")
        if cl.get("reason"):
            extra.append(cl["reason"])
        if extra:
            out.append(f"- `{cl['name']}`: " + "; ".join(extra))
    return "\n".join(out) + "\n"


def _signed(v: dict, digits: int = 4) -> str:
    ci = v.get("ci95")
    return f"{v['mean']:+.{digits}f}" + ("" if ci is None else f" [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]")


def _chance_mark(row: dict, metric: str, chance: float | None) -> str:
    """' ≈chance' when chance lies within the seeds' 95% interval or 1.96 item-level standard errors of the mean."""
    if chance is None or row.get(f"{metric}_mean") is None:
        return ""
    mean, ci, se = row[f"{metric}_mean"], row.get(f"{metric}_ci95"), row.get(f"{metric}_stderr_mean")
    within_seeds = ci is not None and ci[0] <= chance <= ci[1]
    within_items = se is not None and abs(mean - chance) <= 1.96 * se
    return " ≈chance" if within_seeds or within_items else ""


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
