"""The paper's claims on one corpus, decided with statistics: five arms x seeds on the same data and budgets.

    python experiments/reproduce_paper.py --config configs/repro_small.py --workdir W --seeds 0,1,2
        [--arms progressive,fixed_lr,independent,consistency,paper_operator] [--lr_rule_file F]
        [--fixed_lr 0] [--consistency_weight 0.5] [--allow_repeats] [--config.x=y ...]

Arms (each a normal, resumable family run in W/arms/<arm>/seed<s>/; `cfg.seed` = s, so the arms of one seed share
its data order and first member):
    progressive     progressive training (`zero` width, `identity` depth), size-adaptive peak LR (the config's
                    lr.rule, or the fitted rule of --lr_rule_file from experiments/lr_sweep.py)
    fixed_lr        progressive, one constant peak LR for every member (default: the smallest member's peak)
    independent     every member from scratch, tokens proportional to size, size-adaptive LR
    consistency     progressive + w * KL(p_prev || p_this) for the first consistency_fraction of each stage
    paper_operator  progressive with the paper's operator: bert2BERT AKI width growth + stacked depth

Writes W/comparison.json (per arm: seeds, total FLOPs; per member and arm: `<metric>_mean` / `<metric>_ci95` for
the held-out loss, epochs, KL and every downstream metric in the members' eval.json; `claims` with verdicts and the
paired-by-seed differences with 95% t-intervals), W/comparison.md and W/comparison.png (final held-out loss vs
cumulative FLOPs, with intervals). A config whose budget needs more than one pass over the training data is
refused unless --allow_repeats. Bad input (empty/duplicate --seeds, unknown arm, a config or rule file that does
not fit) is a one-line error with exit code 2. Rerunning resumes.
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

ARMS = ("progressive", "fixed_lr", "independent", "consistency", "paper_operator")
# Claim 1 (the paper's headline): at least this much compute saved with every member within this relative loss
# of its independent twin.
MIN_FLOPS_SAVED = 0.25
QUALITY_MARGIN = 0.005

_CONFIG = config_flags.DEFINE_config_file("config", None, "family config", lock_config=False)
flags.DEFINE_string("workdir", None, "output directory")
flags.DEFINE_list("arms", list(ARMS), "arms to run")
flags.DEFINE_string("seeds", None, "comma-separated distinct seeds; every arm runs once per seed (default: cfg.seed)")
flags.DEFINE_string("lr_rule_file", None, "fitted LR rule from experiments/lr_sweep.py (JSON); progressive arms use "
                    "it, fixed_lr the smallest member's fitted peak")
flags.DEFINE_bool("allow_repeats", False, "run even when a budget needs more than one pass over the training data")
flags.DEFINE_float("fixed_lr", 0.0, "fixed_lr arm's constant peak LR (0: the adaptive peak of the smallest member)")
flags.DEFINE_float("consistency_weight", 0.5, "consistency arm: KL weight")
flags.DEFINE_float("consistency_fraction", 0.5, "consistency arm: fraction of each stage with the KL term")
flags.DEFINE_integer("task_items", 200, "items in the generated multiple-choice task")
flags.DEFINE_string("bench_suite", "core", "standard benchmarks per member per arm (jaxgrow/benchmarks.py; '' = off)")
flags.DEFINE_integer("bench_limit", 100, "items per benchmark task (MMLU: per subject); 0 = all")
FLAGS = flags.FLAGS


def apply_lr_rule_file(cfg: ml_collections.ConfigDict, path: str) -> ml_collections.ConfigDict:
    """The config with the fitted rule of `path` (written by lr_sweep.py); InputError if it does not fit."""
    from jaxgrow import config as config_lib, lr_fit  # noqa: PLC0415

    rule = lr_fit.load_rule_file(path, cfg)
    out = ml_collections.ConfigDict(cfg.to_dict())
    for key, value in rule["lr"].items():
        out.lr[key] = value
    config_lib.validate(out)
    return out


def arm_config(base: ml_collections.ConfigDict, arm: str, seed: int) -> ml_collections.ConfigDict:
    from jaxgrow import budgets, schedules  # noqa: PLC0415

    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.seed = int(seed)
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
    if arm == "paper_operator":
        cfg.expansion.method, cfg.expansion.depth = "bert2bert_aki", "stack"
    return cfg


def check_passes(arm_cfgs: dict, allow_repeats: bool) -> dict:
    """{arm: [epochs per member]}; InputError when an arm repeats its data and repeats are not allowed."""
    from jaxgrow import budgets, config as config_lib, data, passes  # noqa: PLC0415

    base = next(iter(arm_cfgs.values()))
    corpus = data.prepare(base.data, base.model.vocab_size, None)
    out = {}
    for arm, cfg in arm_cfgs.items():
        stages = budgets.budgets(cfg)
        epochs = passes.epochs_per_member(stages, cfg.mode, cfg.data.batch_size, corpus.train_tokens, cfg.data.seq_len)
        out[arm] = epochs
        warning = passes.repeat_warning([s.name for s in stages], epochs, corpus.train_tokens)
        if warning and not allow_repeats:
            raise config_lib.InputError(f"arm {arm}: {warning}; or pass --allow_repeats")
        if warning:
            print(f"WARNING arm {arm}: {warning}", flush=True)
    return out


def run_arm(label: str, cfg, workdir: Path, tasks: Path) -> dict:
    from jaxgrow import commands, faults, family  # noqa: PLC0415

    done = workdir / "report.json"
    if not (done.exists() and (workdir / "eval.json").exists()):
        t0 = time.perf_counter()
        with faults.SignalFlag() as signals:
            setup = family.run(cfg, workdir, signals)
        family.write_report(setup)
        commands.evaluate_members(workdir, [str(tasks)])
        print(f"[{label}] trained and evaluated in {time.perf_counter() - t0:.0f}s", flush=True)
    run_benchmarks(label, workdir)
    return {"report": json.loads(done.read_text()), "eval": json.loads((workdir / "eval.json").read_text())}


def run_benchmarks(label: str, workdir: Path) -> None:
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
    print(f"[{label}] benchmarks {FLAGS.bench_suite} in {time.perf_counter() - t0:.0f}s", flush=True)


def write_tasks(cfg, path: Path) -> None:
    from jaxgrow import data, evaluate  # noqa: PLC0415

    if path.exists():
        return
    src = data.sources(cfg.data)
    texts = data.read_documents(src.eval, cfg.data.text_field, "data.eval_files")
    items = evaluate.make_continuation_tasks(texts, n_items=FLAGS.task_items, seed=cfg.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items))


# ----------------------------------------------------------------------------------------------------------------
# Aggregation over seeds and the claims


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
    for t in ("temperature_0", "temperature_1"):  # this member drafting for the next (jaxgrow/inference.py)
        out[f"draft_acceptance/{t}"] = (m.get("draft_acceptance") or {}).get(t)
    flat: dict = {}
    _flatten("", {k: v for k, v in run["eval"]["members"].get(name, {}).items() if k != "eval_loss"}, flat)
    out.update(flat)
    return out


def _summ(values_by_seed: dict, seeds: list) -> dict:
    from jaxgrow import stats  # noqa: PLC0415

    return stats.mean_ci([values_by_seed[s] for s in seeds])


def _claim(name: str, statement: str, diff: dict, claim_sign: int, *, extra_ok: bool = True, margin: float = 0.0,
           detail: dict | None = None) -> dict:
    """One claim: `diff` is the mean_ci of a per-seed paired difference; the claim says diff - margin has
    sign claim_sign. extra_ok=False (a deterministic precondition failed) makes it not_met."""
    from jaxgrow import stats  # noqa: PLC0415

    shifted = dict(diff)
    if diff.get("ci95") is not None:
        shifted["ci95"] = [diff["ci95"][0] - margin, diff["ci95"][1] - margin]
    verdict = stats.verdict(shifted, claim_sign) if extra_ok else "not_met"
    return {"name": name, "statement": statement, "verdict": verdict, "mean_paired_difference": diff["mean"],
            "ci95": diff["ci95"], "n_seeds": diff["n"], "per_seed": diff["values"], "margin": margin, **(detail or {})}


def compare(results: dict, seeds: list) -> dict:
    """results[arm][seed] -> the comparison dict (see the module docstring)."""
    from jaxgrow import inference, stats  # noqa: PLC0415

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
    per_seed_accept = {t: {a: {s: (inference.mean_draft_acceptance(results[a][s]["report"]["members"]) or {}).get(t)
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
    from jaxgrow import stats  # noqa: PLC0415

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
    from jaxgrow import benchmarks  # noqa: PLC0415

    primary = {f"{suite}/{t}/{benchmarks.PRIMARY[t]}" for suite, ts in benchmarks.SUITES.items() for t in ts}
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
    ax.set_xlabel("train FLOPs that produced the member (cumulative over a progressive lineage)")
    ax.set_ylabel("held-out loss (nats/token), mean ± 95% CI")
    ax.set_title(f"members' final held-out loss, {len(c['seeds'])} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv) -> None:
    from jaxgrow import config as config_lib, logs, stats  # noqa: PLC0415

    if FLAGS.workdir is None or _CONFIG.value is None:
        raise config_lib.InputError("--config and --workdir are required")
    arms = [a.strip() for a in FLAGS.arms if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise config_lib.InputError(f"--arms: unknown {unknown or 'empty list'}; valid: {list(ARMS)}")
    if len(set(arms)) != len(arms):
        raise config_lib.InputError(f"--arms={','.join(arms)} repeats an arm; each arm must appear once")
    base = _CONFIG.value
    seeds = stats.parse_seeds(FLAGS.seeds if FLAGS.seeds is not None else str(base.seed))
    config_lib.validate(base)
    if FLAGS.lr_rule_file:
        base = apply_lr_rule_file(base, FLAGS.lr_rule_file)
    logs.setup()
    arm_cfgs = {(a, s): arm_config(base, a, s) for a in arms for s in seeds}
    for cfg in arm_cfgs.values():
        config_lib.validate(cfg)
    workdir = Path(FLAGS.workdir).absolute()
    finished = all((workdir / "arms" / a / f"seed{s}" / "eval.json").exists() for a, s in arm_cfgs)
    if not finished:  # (a finished set was checked when it was trained; its reports state the epochs)
        check_passes({a: arm_cfgs[(a, seeds[0])] for a in arms}, FLAGS.allow_repeats)
    tasks = workdir / "tasks.jsonl"
    write_tasks(base, tasks)
    results: dict = {a: {} for a in arms}
    for s in seeds:  # seed-major: an interrupted run still has complete seeds for every arm
        for a in arms:
            results[a][s] = run_arm(f"{a}/seed{s}", arm_cfgs[(a, s)], workdir / "arms" / a / f"seed{s}", tasks)
    comparison = compare(results, seeds)
    (workdir / "comparison.json").write_text(json.dumps(comparison, indent=2))
    (workdir / "comparison.md").write_text(markdown(comparison))
    plot(comparison, workdir / "comparison.png")
    print(markdown(comparison))
    print(f"wrote {workdir / 'comparison.json'}, comparison.md, comparison.png")


def main(argv):
    from jaxgrow.config import InputError  # noqa: PLC0415

    try:
        run(argv)
    except InputError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
