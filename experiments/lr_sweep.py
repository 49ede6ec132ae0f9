"""Fits the size-adaptive peak-LR rule from data: every member trained alone at log-spaced peak LRs.

    python experiments/lr_sweep.py --config configs/repro_small.py --workdir W [--lr_min 1e-3 --lr_max 3e-2
        --num_lrs 4] [--rule table|power] [--seed 0] [--out W/lr_rule.json] [--config.x=y ...]

Each member size trains independently (from scratch, its own independent-mode token budget, the config's schedule
shape) once per peak LR, as a one-member `constant`-rule run in W/<member>/lr<peak>/ (resumable). The loss-optimal
peak per size is the best held-out loss, refined by a parabola in log(lr) through its neighbours; then
`peak = a·N^-α` is fitted by least squares in log-log, with a 95% t-interval on α (needs >= 3 sizes). The rule file
(JSON, see jaxgrow/eval/lr_fit.py) holds the override `lr.rule=table` (the per-size optima, log-log interpolated) or
`power` (the fit), the fit and the raw sweep; reproduce_paper.py --lr_rule_file uses it (progressive arms: the rule;
fixed_lr: the smallest member's fitted peak). Bad input (fewer than 2 LRs, a bad range or rule) exits 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from jaxgrow.eval import lr_fit  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "family config", lock_config=False)
flags.DEFINE_string("workdir", None, "output directory (one run per member and LR)")
flags.DEFINE_float("lr_min", 1e-3, "smallest peak LR")
flags.DEFINE_float("lr_max", 3e-2, "largest peak LR")
flags.DEFINE_integer("num_lrs", 4, "peak LRs, log-spaced from lr_min to lr_max (>= 2; >= 4 to locate an optimum)")
flags.DEFINE_string("rule", "table", "rule written to the file: table (per-size optima) or power (the fit)")
flags.DEFINE_integer("seed", 0, "seed of every run")
flags.DEFINE_string("out", None, "rule file (default: W/lr_rule.json)")
flags.DEFINE_bool("allow_repeats", False, "run even when a member's budget needs more than one pass over the data")
FLAGS = flags.FLAGS


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


def run_one(cfg, workdir: Path) -> float:
    from jaxgrow.family import pipeline as family  # noqa: PLC0415
    from jaxgrow.train import faults  # noqa: PLC0415

    done = workdir / "report.json"
    if not done.exists():
        with faults.SignalFlag() as signals:
            setup = family.run(cfg, workdir, signals)
        family.write_report(setup)
    return float(json.loads(done.read_text())["members"][0]["eval_loss"])


def run(argv) -> None:
    from jaxgrow import config as config_lib  # noqa: PLC0415
    from jaxgrow.data import corpus as corpus_lib  # noqa: PLC0415
    from jaxgrow.family import budgets, checks, passes  # noqa: PLC0415
    from jaxgrow.train import logs  # noqa: PLC0415

    if FLAGS.workdir is None or _CONFIG.value is None:
        raise config_lib.InputError("--config and --workdir are required")
    if FLAGS.rule not in lr_fit.RULES:
        raise config_lib.InputError(f"--rule={FLAGS.rule!r} must be one of {list(lr_fit.RULES)}")
    lrs = lr_fit.log_spaced(FLAGS.lr_min, FLAGS.lr_max, FLAGS.num_lrs)
    base = _CONFIG.value
    checks.validate(base)
    logs.setup()
    stages = budgets.budgets(base, "independent")
    corpus = corpus_lib.prepare(base.data, base.model.vocab_size, None)
    epochs = passes.epochs_per_member(stages, "independent", base.data.batch_size, corpus.train_tokens,
                                      base.data.seq_len)
    warning = passes.repeat_warning([s.name for s in stages], epochs, corpus.train_tokens)
    if warning and not FLAGS.allow_repeats:
        raise config_lib.InputError(f"{warning}; or pass --allow_repeats")
    workdir = Path(FLAGS.workdir).absolute()
    sweep = []
    t0 = time.perf_counter()
    for i, stage in enumerate(stages):
        losses = []
        for lr in lrs:
            # the run directory names its LR, so a rerun with another range never reuses a run at a different LR
            loss = run_one(member_config(base, i, lr, FLAGS.seed), workdir / stage.name / f"lr{lr:.6g}")
            losses.append(loss)
            print(f"[{stage.name} N={stage.non_embedding_params:,}] peak {lr:.4g}: held-out loss {loss:.4f}", flush=True)
        best = lr_fit.optimal_peak(lrs, losses)
        sweep.append({"name": stage.name, "non_embedding_params": stage.non_embedding_params, "tokens": stage.tokens,
                      "epochs": epochs[i], "lrs": lrs, "eval_loss": losses, "optimum": best})
    ns = [s["non_embedding_params"] for s in sweep]
    peaks = [s["optimum"]["peak"] for s in sweep]
    fit = lr_fit.fit_power(ns, peaks)
    fit["optimal_peaks"] = {s["name"]: s["optimum"]["peak"] for s in sweep}
    fit["optimum_at_sweep_edge"] = [s["name"] for s in sweep if s["optimum"]["edge"]]
    rule = {"members": lr_fit.members_signature(base), "lr": lr_fit.rule_lr(FLAGS.rule, ns, peaks, fit), "fit": fit,
            "sweep": sweep, "seed": FLAGS.seed, "wall_s": time.perf_counter() - t0}
    out = Path(FLAGS.out) if FLAGS.out else workdir / "lr_rule.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rule, indent=2))
    os.replace(tmp, out)
    ci = fit["alpha_ci95"]
    print(f"fitted peak = {fit['a']:.4g} * N^-{fit['alpha']:.3f}; alpha 95% CI "
          f"{'— (2 sizes)' if ci is None else f'[{ci[0]:.3f}, {ci[1]:.3f}]'}; optimal peaks "
          + ", ".join(f"{s['name']} {s['optimum']['peak']:.4g}" + (" (edge)" if s["optimum"]["edge"] else "")
                      for s in sweep))
    print(f"wrote {out} (lr.rule={rule['lr']['rule']})")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from jaxgrow.cli.errors import script_main  # noqa: PLC0415

    app.run(script_main(run))
