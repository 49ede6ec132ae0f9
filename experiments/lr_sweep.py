"""Fits peak-LR rules from data: a from-scratch sweep (every member trained alone) or a re-warm sweep on grown
models (--progressive).

    python experiments/lr_sweep.py --config configs/repro_small.py --workdir W [--lr_min 1e-3 --lr_max 3e-2
        --num_lrs 6] [--rule table|power] [--seed 0] [--out W/lr_rule.json] [--config.x=y ...]
    python experiments/lr_sweep.py --progressive --lr_rule_file W/lr_rule.json --config configs/repro_small.py \
        --workdir W2 [--lr_min 5e-4 --lr_max 1.6e-2 --num_lrs 6] [--out W2/lr_rule_progressive.json]

From scratch: each member size trains independently (its own independent-mode token budget, the config's schedule
shape) once per peak LR, as a one-member `constant`-rule run in W/<member>/lr<peak>/ (resumable).

Progressive (--progressive): the paper's knob is the *re-warm* peak of a grown model. Stage 0 (the first member)
trains from scratch at the peak the from-scratch rule (--lr_rule_file) gives it; for each stage k >= 1, every swept
peak starts from the same grown checkpoint of the stage-(k-1) member (the run of the best swept peak of stage k-1)
and trains stage k's own budget (the paper's cost rule of the whole family: member k's cumulative cost equals
training it alone). Each sweep point is the family pipeline itself on members 0..k: the parent's run directory is
copied (its finished members are skipped) and stage k runs at peak p (an `lr.table` rule that gives every earlier
member its chosen peak and member k the swept one), so a point is bitwise the stage the reproduction would run.

Both: the loss-optimal peak per size is the best held-out loss, refined by a parabola in log(lr) through its
neighbours; an optimum at the edge of the range extends the range by one log step on that side (up to
--max_extend times) until it is interior. Then `peak = a·N^-α` is fitted by least squares in log-log, with a 95%
t-interval on α (needs >= 3 sizes). The rule file (JSON, see jaxgrow/eval/lr_fit.py) holds the override
`lr.rule=table` (the per-size optima, log-log interpolated) or `power` (the fit), the fit and the raw sweep; the
progressive rule file's table gives member 0 its from-scratch peak and every grown member the grown fit's peak, and
it records both fits (`fit`: grown, `fit_scratch`). reproduce_paper.py reads them (--lr_rule_file,
--progressive_lr_rule_file). Bad input (fewer than 5 LRs, a bad range or rule, --progressive without the
from-scratch rule file or on a one-member config) exits 2 with one line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import ml_collections
from absl import app, flags
from ml_collections import config_flags

import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "family config", lock_config=False)
flags.DEFINE_string("workdir", None, "output directory (one run per member and LR)")
flags.DEFINE_float("lr_min", 1e-3, "smallest peak LR")
flags.DEFINE_float("lr_max", 3e-2, "largest peak LR")
flags.DEFINE_integer("num_lrs", 6, "peak LRs, log-spaced from lr_min to lr_max (>= 5)")
flags.DEFINE_integer("max_extend", 3, "times the range may grow by one log step when an optimum sits at its edge")
flags.DEFINE_string("rule", "table", "rule written to the file: table (per-size optima) or power (the fit)")
flags.DEFINE_integer("seed", 0, "seed of every run")
flags.DEFINE_string("out", None, "rule file (default: W/lr_rule.json, with --progressive W/lr_rule_progressive.json)")
flags.DEFINE_bool("progressive", False, "sweep the re-warm peak of each grown stage instead of from-scratch runs")
flags.DEFINE_string("lr_rule_file", None, "--progressive: the from-scratch rule file (it tunes the first member, the "
                    "parent of every re-warm sweep)")
flags.DEFINE_bool("allow_repeats", False, "run even when a member's budget needs more than one pass over the data")
FLAGS = flags.FLAGS
DONOR: list[Path | None] = [None]  # the sweep's data, tokenized once (set in `run`)
MIN_POINTS = 5  # fewer cannot locate an optimum and check that it is interior


def member_config(base: ml_collections.ConfigDict, index: int, peak: float, seed: int) -> ml_collections.ConfigDict:
    """A one-member config: member `index` alone, from scratch, on its independent budget, at constant peak."""
    from jaxgrow import config as config_lib  # noqa: PLC0415
    from jaxgrow.family import budgets  # noqa: PLC0415

    member = config_lib.members(base)[index]
    stage = budgets.budgets(base, "independent")[index]
    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.mode = "independent"
    cfg.seed = int(seed)
    cfg.model = ml_collections.ConfigDict(member.model.to_dict())
    cfg.members = ml_collections.ConfigDict()
    config_lib.add_member(cfg, member.name, tokens=int(round(stage.tokens / cfg.budget_scale)))
    cfg.lr.rule, cfg.lr.peak = "constant", float(peak)
    return cfg


def lineage_config(base: ml_collections.ConfigDict, k: int, peaks: list[float], seed: int) -> ml_collections.ConfigDict:
    """The progressive family truncated to members 0..k with each member's budget pinned to the whole family's
    (member `tokens` = its cost-equivalent total T_i, so stage i trains exactly the tokens it trains in the full
    family), member i re-warming to peaks[i] (an lr.table with one node per member size)."""
    from jaxgrow import config as config_lib  # noqa: PLC0415
    from jaxgrow.family import budgets  # noqa: PLC0415
    from jaxgrow.model import layout  # noqa: PLC0415

    fam = config_lib.members(base)[:k + 1]
    alone = budgets.budgets(base, "independent")
    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.mode, cfg.seed = "progressive", int(seed)
    cfg.members = ml_collections.ConfigDict()
    for i, m in enumerate(fam):
        overrides = {key: v for key, v in base.members[m.name].items() if key not in ("position", "tokens")}
        config_lib.add_member(cfg, m.name, tokens=int(round(alone[i].tokens / cfg.budget_scale)), **overrides)
    nodes = [(layout.non_embedding_param_count(m.model), p) for m, p in zip(fam, peaks)]
    cfg.lr.rule, cfg.lr.table = "table", ",".join(f"{n}:{p:.9g}" for n, p in nodes)
    cfg.allow_config_change = True  # a copied parent run directory holds the shorter lineage's config
    return cfg


def run_one(cfg, workdir: Path, member_index: int = 0) -> float:
    from jaxgrow.family import pipeline as family  # noqa: PLC0415
    from jaxgrow.train import faults  # noqa: PLC0415

    done = workdir / "report.json"
    if not done.exists():
        common.adopt_data_cache(DONOR[0], workdir)
        with faults.SignalFlag() as signals:
            family.train_and_report(cfg, workdir, signals, consistency=False)
    return float(json.loads(done.read_text())["members"][member_index]["eval_loss"])


def copy_parent(parent: Path, dest: Path) -> None:
    """A sweep point's starting run directory: the parent's finished members, stages, budgets and data cache (its
    report and metrics are the parent's own, not copied)."""
    if dest.exists():
        return
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(parent, tmp, ignore=shutil.ignore_patterns("report.*", "*.png", "metrics.jsonl", "tb", "eval.json", "lock.json"))
    os.replace(tmp, dest)


def sweep_size(name: str, lrs: list[float], loss_at, max_extend: int) -> tuple[list[float], list[float], dict]:
    """Runs `loss_at(lr)` over lrs, extending the range by one log step while the optimum sits at an edge."""
    from jaxgrow.eval import lr_fit  # noqa: PLC0415

    lrs = list(lrs)
    losses = [loss_at(lr) for lr in lrs]
    step = math.log(lrs[1] / lrs[0])
    for _ in range(max_extend):
        best = lr_fit.optimal_peak(lrs, losses)
        if not best["edge"]:
            break
        lr = lrs[0] / math.exp(step) if best["best_swept"] == min(lrs) else lrs[-1] * math.exp(step)
        print(f"[{name}] optimum at the edge of the range: extending it to {lr:.4g}", flush=True)
        pairs = sorted(zip(lrs + [lr], losses + [loss_at(lr)]))
        lrs, losses = [p[0] for p in pairs], [p[1] for p in pairs]
    return lrs, losses, lr_fit.optimal_peak(lrs, losses)


def scratch_sweep(base, stages, epochs, lrs, workdir: Path) -> list[dict]:
    sweep = []
    for i, stage in enumerate(stages):
        def loss_at(lr, i=i, stage=stage):
            loss = run_one(member_config(base, i, lr, FLAGS.seed), workdir / stage.name / f"lr{lr:.6g}")
            print(f"[{stage.name} N={stage.non_embedding_params:,}] peak {lr:.4g}: held-out loss {loss:.4f}", flush=True)
            return loss

        swept, losses, best = sweep_size(stage.name, lrs, loss_at, FLAGS.max_extend)
        sweep.append({"name": stage.name, "non_embedding_params": stage.non_embedding_params, "tokens": stage.tokens,
                      "epochs": epochs[i], "lrs": swept, "eval_loss": losses, "optimum": best})
    return sweep


def progressive_sweep(base, stages, epochs, lrs, workdir: Path, first_peak: float) -> tuple[list[dict], list[float]]:
    """Stage 0 at first_peak, then the re-warm sweep of every grown stage; returns (sweep, chosen peaks)."""
    chosen = [first_peak]
    parent = workdir / stages[0].name / f"lr{first_peak:.6g}"
    loss0 = run_one(lineage_config(base, 0, chosen, FLAGS.seed), parent, 0)
    print(f"[{stages[0].name}] from scratch at peak {first_peak:.4g}: held-out loss {loss0:.4f}", flush=True)
    sweep = []
    for k in range(1, len(stages)):
        stage = stages[k]
        runs = {}

        def loss_at(lr, k=k, stage=stage, runs=runs):
            run_dir = workdir / stage.name / f"lr{lr:.6g}"
            copy_parent(parent, run_dir)
            loss = run_one(lineage_config(base, k, chosen + [lr], FLAGS.seed), run_dir, k)
            runs[lr] = run_dir
            print(f"[{stage.name} N={stage.non_embedding_params:,}, grown from {stages[k - 1].name}] re-warm peak "
                  f"{lr:.4g}: held-out loss {loss:.4f}", flush=True)
            return loss

        swept, losses, best = sweep_size(stage.name, lrs, loss_at, FLAGS.max_extend)
        sweep.append({"name": stage.name, "non_embedding_params": stage.non_embedding_params, "tokens": stage.tokens,
                      "epochs": epochs[k], "lrs": swept, "eval_loss": losses, "optimum": best,
                      "parent": {"name": stages[k - 1].name, "peak": chosen[-1]}})
        # the next stage grows the member trained at the best swept peak (the refined optimum was not run)
        chosen.append(best["best_swept"])
        parent = runs[best["best_swept"]]
    return sweep, chosen


def rule_peak(rule: dict, n: int) -> float:
    """The peak LR a rule file's `lr` override gives a member of n non-embedding parameters."""
    from jaxgrow.train import schedules  # noqa: PLC0415

    lr = dict(rule["lr"])
    return schedules.peak_lr(n, lr.pop("rule"), **lr)


def run(argv) -> None:
    from jaxgrow import config as config_lib  # noqa: PLC0415
    from jaxgrow.data import corpus as corpus_lib  # noqa: PLC0415
    from jaxgrow.eval import lr_fit  # noqa: PLC0415
    from jaxgrow.family import budgets, checks, passes  # noqa: PLC0415
    from jaxgrow.train import logs  # noqa: PLC0415

    if FLAGS.workdir is None or _CONFIG.value is None:
        raise config_lib.InputError("--config and --workdir are required")
    if FLAGS.rule not in lr_fit.RULES:
        raise config_lib.InputError(f"--rule={FLAGS.rule!r} must be one of {list(lr_fit.RULES)}")
    if FLAGS.num_lrs < MIN_POINTS:
        raise config_lib.InputError(f"--num_lrs={FLAGS.num_lrs}: a sweep needs at least {MIN_POINTS} learning rates "
                                    "to locate an optimum and check that it is not at the edge of the range")
    lrs = lr_fit.log_spaced(FLAGS.lr_min, FLAGS.lr_max, FLAGS.num_lrs)
    base = _CONFIG.value
    checks.validate(base)
    scratch_rule = None
    if FLAGS.progressive:
        if len(config_lib.members(base)) < 2:
            raise config_lib.InputError("--progressive: the config has one member; a re-warm sweep needs a family "
                                        "(a member to grow from and one to grow into)")
        if not FLAGS.lr_rule_file:
            raise config_lib.InputError("--progressive needs --lr_rule_file: the from-scratch rule "
                                        "(experiments/lr_sweep.py without --progressive) that tunes the first member, "
                                        "the parent run of every re-warm sweep")
        scratch_rule = lr_fit.load_rule_file(FLAGS.lr_rule_file, base)
    logs.setup()
    mode = "progressive" if FLAGS.progressive else "independent"
    stages = budgets.budgets(base, mode)
    workdir = Path(FLAGS.workdir).absolute()
    # every sweep point reads the same data: tokenized once, adopted by each point's run (common.data_donor)
    DONOR[0] = common.data_donor(base.data, base.model.vocab_size, workdir / "data_donor")
    corpus = corpus_lib.prepare(base.data, base.model.vocab_size, DONOR[0])
    epochs = passes.epochs_per_member(stages, mode, base.data.batch_size, corpus.train_tokens, base.data.seq_len)
    warning = passes.repeat_warning([s.name for s in stages], epochs, corpus.train_tokens)
    if warning and not FLAGS.allow_repeats:
        raise config_lib.InputError(f"{warning}; or pass --allow_repeats")
    import jax  # noqa: PLC0415  (every run of a member size compiles the same programs: one persistent cache)

    jax.config.update("jax_compilation_cache_dir", str(workdir / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    t0 = time.perf_counter()
    if FLAGS.progressive:
        first_peak = rule_peak(scratch_rule, stages[0].non_embedding_params)
        sweep, chosen = progressive_sweep(base, stages, epochs, lrs, workdir, first_peak)
    else:
        sweep = scratch_sweep(base, stages, epochs, lrs, workdir)
    ns = [s["non_embedding_params"] for s in sweep]
    peaks = [s["optimum"]["peak"] for s in sweep]
    fit = lr_fit.fit_power(ns, peaks)
    fit["optimal_peaks"] = {s["name"]: s["optimum"]["peak"] for s in sweep}
    fit["optimum_at_sweep_edge"] = [s["name"] for s in sweep if s["optimum"]["edge"]]
    rule = {"members": lr_fit.members_signature(base), "fit": fit, "sweep": sweep, "seed": FLAGS.seed,
            "kind": mode, "wall_s": time.perf_counter() - t0}
    if FLAGS.progressive:
        # member 0 keeps its from-scratch peak (it is trained from scratch in every arm); grown members follow the fit
        first = (stages[0].non_embedding_params, first_peak)
        grown = [(n, fit["a"] * n ** -fit["alpha"]) for n in ns]
        rule["lr"] = {"rule": "table", "table": ",".join(f"{int(n)}:{float(p)!r}" for n, p in [first] + grown)}
        rule["fit_scratch"] = scratch_rule["fit"]
        rule["first_member"] = {"name": stages[0].name, "peak": first_peak, "from": str(FLAGS.lr_rule_file)}
        rule["lineage_peaks"] = dict(zip([s.name for s in stages], chosen))
    else:
        rule["lr"] = lr_fit.rule_lr(FLAGS.rule, ns, peaks, fit)
    out = Path(FLAGS.out) if FLAGS.out else workdir / ("lr_rule_progressive.json" if FLAGS.progressive else "lr_rule.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rule, indent=2))
    os.replace(tmp, out)
    ci = fit["alpha_ci95"]
    print(f"fitted {'re-warm' if FLAGS.progressive else 'from-scratch'} peak = {fit['a']:.4g} * N^-{fit['alpha']:.3f}; "
          f"alpha 95% CI {'— (2 sizes)' if ci is None else f'[{ci[0]:.3f}, {ci[1]:.3f}]'}; optimal peaks "
          + ", ".join(f"{s['name']} {s['optimum']['peak']:.4g}" + (" (edge)" if s["optimum"]["edge"] else "")
                      for s in sweep))
    if FLAGS.progressive:
        sc = scratch_rule["fit"]
        print(f"from-scratch fit (--lr_rule_file): alpha {sc['alpha']:.3f} {sc.get('alpha_ci95')}; "
              f"re-warm fit: alpha {fit['alpha']:.3f} {ci}")
    print(f"wrote {out} (lr.rule={rule['lr']['rule']})")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from jaxgrow.family.boundary import script_main  # noqa: PLC0415

    app.run(script_main(run))
