"""The paper's claims decided in the paper's own contrasts, and the other direction beside them: arms x seeds on the
same data and budgets.

    python experiments/reproduce_paper.py --config configs/repro_small.py --workdir W --seeds 0,1,2,3,4,5,6,7
        [--arms progressive,fixed_lr,independent,paper_operator,pruned[,consistency]] [--lr_rule_file SCRATCH.json]
        [--progressive_lr_rule_file GROWN.json] [--parallel 2] [--fixed_lr 0] [--consistency_weight 0.5]
        [--allow_repeats] [--config.x=y ...]

Arms (each a normal, resumable family run in W/arms/<arm>/seed<s>/; `cfg.seed` = s, so the arms of one seed share
its data order and first member):
    progressive     progressive training (`zero` width, `identity` depth), each stage re-warming to the
                    size-adjusted peak of the rule fitted on grown models (--progressive_lr_rule_file, from
                    `lr_sweep.py --progressive`; else the config's / --lr_rule_file's rule)
    fixed_lr        progressive, one fixed re-warm peak for every stage: the first member's tuned peak (the one it
                    is trained from scratch with in every arm), or --fixed_lr
    independent     every member from scratch at its own tuned peak (--lr_rule_file, from `lr_sweep.py`), tokens
                    proportional to size
    paper_operator  progressive with the paper's operator: bert2BERT AKI width growth + stacked depth (the
                    progressive arm's LR rule)
    consistency     progressive + w * KL(p_prev || p_this) for the first consistency_fraction of each stage
    pruned          the other direction (config.mode=pruned): the largest member from scratch on (1 - distill_share)
                    of its tokens, then every smaller member pruned from it by activation importance and distilled
                    from it (KL to its logits beside cross-entropy) on the rest of the budget; each size at its
                    from-scratch tuned peak (--lr_rule_file; the distillation peak is not tuned separately)
Parametric arms for trade-off sweeps (each its own arm directory, paired by seed with the others):
    fixed_lr:P           progressive with the constant re-warm peak P for every stage
    consistency:W:F      progressive + a KL term of weight W decaying to 0 over the first F of each stage
    distil_parent:W      progressive + a constant KL term of weight W to the parent over the whole stage
                         (the transition table `m=grow(s)+distil(s)`, ...)

Writes W/comparison.json (per arm: seeds, total FLOPs, peak LRs; per member and arm: `<metric>_mean` /
`<metric>_ci95` for the held-out loss, epochs, KL and every downstream metric in the members' eval.json; `claims`
(jaxgrow/eval/comparison.py) with verdicts, paired-by-seed differences, 95% t-intervals and minimum detectable
effects), W/comparison.md and W/comparison.png (final held-out loss vs cumulative FLOPs, with intervals).
--parallel N trains N arm-seeds at a time in separate processes, which share one persistent XLA compilation cache
(W/xla_cache: every arm-seed of a member size compiles the same programs). A config whose budget needs more than one
pass over the training data is refused unless --allow_repeats. Bad input (empty/duplicate --seeds, fewer than 2
seeds (the claims need intervals), an unknown arm, a config or rule file that does not fit) is a one-line error
with exit code 2. Rerunning resumes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ml_collections
from absl import app, flags
from ml_collections import config_flags

import common

from jaxgrow.eval import comparison
from jaxgrow.family import budgets

ARMS = ("progressive", "fixed_lr", "independent", "consistency", "paper_operator", "pruned")
PARAMETRIC = {"fixed_lr": 1, "consistency": 2, "distil_parent": 1}  # arm kind -> its number of ':' parameters

_CONFIG = config_flags.DEFINE_config_file("config", None, "family config", lock_config=False)
flags.DEFINE_string("workdir", None, "output directory")
flags.DEFINE_list("arms", list(ARMS), "arms to run")
flags.DEFINE_string("seeds", None, "comma-separated distinct seeds; every arm runs once per seed (default: cfg.seed)")
flags.DEFINE_string("lr_rule_file", None, "from-scratch LR rule (experiments/lr_sweep.py): the independent arm's "
                    "peaks, the first member's peak in every arm, and the progressive arms' rule without "
                    "--progressive_lr_rule_file")
flags.DEFINE_string("progressive_lr_rule_file", None, "re-warm LR rule fitted on grown models "
                    "(experiments/lr_sweep.py --progressive): the progressive and paper_operator arms' peaks")
flags.DEFINE_integer("parallel", 1, "arm-seeds trained at a time (separate processes)")
flags.DEFINE_bool("allow_repeats", False, "run even when a budget needs more than one pass over the training data")
flags.DEFINE_float("fixed_lr", 0.0, "fixed_lr arm's constant peak LR (0: the adaptive peak of the smallest member)")
flags.DEFINE_float("consistency_weight", 0.5, "consistency arm: KL weight")
flags.DEFINE_float("consistency_fraction", 0.5, "consistency arm: fraction of each stage with the KL term")
flags.DEFINE_integer("task_items", 200, "items in the generated multiple-choice task")
flags.DEFINE_string("bench_suite", "core", "standard benchmarks per member per arm (jaxgrow/eval/benchmarks; '' = off)")
flags.DEFINE_integer("bench_limit", 100, "items per benchmark task (MMLU: per subject); 0 = all")
FLAGS = flags.FLAGS


def arm_kind(arm: str) -> tuple[str, list[float]]:
    """('consistency', [0.5, 0.25]) for 'consistency:0.5:0.25'; ('progressive', []) for a plain arm. Raises
    InputError for an unknown arm or parameters that are not numbers."""
    from jaxgrow import config as config_lib  # noqa: PLC0415

    kind, *params = arm.split(":")
    if (not params and kind not in ARMS) or (params and len(params) != PARAMETRIC.get(kind, -1)):
        raise config_lib.InputError(f"--arms: unknown {[arm]}; valid: {list(ARMS)} or "
                                    "fixed_lr:PEAK, consistency:WEIGHT:FRACTION, distil_parent:WEIGHT")
    try:
        values = [float(x) for x in params]
    except ValueError:
        raise config_lib.InputError(f"--arms: {arm!r} has a parameter that is not a number") from None
    return kind, values


def arm_config(base: ml_collections.ConfigDict, arm: str, seed: int, scratch_rule: str | None,
               grown_rule: str | None) -> ml_collections.ConfigDict:
    """The config of one arm-seed: its mode or transition table, LR rule, expansion and seed."""
    from jaxgrow.eval import lr_fit  # noqa: PLC0415
    from jaxgrow.train import schedules  # noqa: PLC0415

    kind, params = arm_kind(arm)
    cfg = ml_collections.ConfigDict(base.to_dict())
    if scratch_rule:
        cfg = lr_fit.apply_rule_file(cfg, scratch_rule)
    if grown_rule and kind in ("progressive", "paper_operator", "consistency", "distil_parent"):
        cfg = lr_fit.apply_rule_file(cfg, grown_rule)
    cfg.seed = int(seed)
    cfg.mode = {"independent": "independent", "pruned": "pruned"}.get(kind, "progressive")
    if kind == "fixed_lr":
        first = budgets.budgets(cfg)[0]
        lr = cfg.lr
        peak = (params[0] if params else FLAGS.fixed_lr) or schedules.peak_lr(
            first.non_embedding_params, lr.rule, peak=lr.peak, n_ref=lr.n_ref, alpha=lr.alpha, table=lr.table)
        cfg.lr.rule, cfg.lr.peak = "constant", float(peak)
    if kind == "consistency":
        cfg.consistency.weight, cfg.consistency.fraction = params or (FLAGS.consistency_weight,
                                                                      FLAGS.consistency_fraction)
    if kind == "distil_parent":
        from jaxgrow import config as config_lib  # noqa: PLC0415

        names = [m.name for m in config_lib.members(cfg)]
        rows = [f"{names[0]}=scratch"] + [f"{n}=grow({p})+distil({p})" for p, n in zip(names, names[1:])]
        cfg.transitions, cfg.distill.weight = "; ".join(rows), float(params[0])
    if kind == "paper_operator":
        cfg.expansion.method, cfg.expansion.depth = "bert2bert_aki", "stack"
    return cfg


def arm_dir(workdir: Path, arm: str, seed: int) -> Path:
    """W/arms/<arm>/seed<s> (a parametric arm's ':' become '_': consistency:0.5:0.25 -> consistency_0.5_0.25)."""
    return workdir / "arms" / arm.replace(":", "_") / f"seed{seed}"


def check_passes(arm_cfgs: dict, allow_repeats: bool) -> dict:
    """{arm: [epochs per member]}; InputError when an arm repeats its data and repeats are not allowed."""
    from jaxgrow import config as config_lib  # noqa: PLC0415
    from jaxgrow.data import corpus as corpus_lib  # noqa: PLC0415
    from jaxgrow.family import passes  # noqa: PLC0415

    base = next(iter(arm_cfgs.values()))
    corpus = corpus_lib.prepare(base.data, base.model.vocab_size, None)
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


def run_arm(label: str, cfg_json: str, workdir: str, tasks: str, bench_suite: str, bench_limit: int,
            donor: str | None = None) -> dict:
    """Trains (or resumes) one arm-seed, reports it, scores the task file and the benchmark suite; returns its
    report.json and eval.json. A plain function of plain arguments: --parallel runs it in worker processes."""
    from jaxgrow.eval.benchmarks import tasks as bench_tasks  # noqa: PLC0415
    from jaxgrow.family import evaluation, pipeline as family  # noqa: PLC0415
    from jaxgrow.train import faults, logs  # noqa: PLC0415

    logs.setup()
    cfg = ml_collections.ConfigDict(json.loads(cfg_json))
    workdir = Path(workdir)
    done = workdir / "report.json"
    if not (done.exists() and (workdir / "eval.json").exists()):
        common.adopt_data_cache(Path(donor) if donor else None, workdir)
        t0 = time.perf_counter()
        with faults.SignalFlag() as signals:
            family.train_and_report(cfg, workdir, signals)
        evaluation.evaluate_members(workdir, [tasks])
        print(f"[{label}] trained and evaluated in {time.perf_counter() - t0:.0f}s", flush=True)
    if bench_suite:  # the standard suite for every member (skipped when eval.json already has it)
        suites = bench_tasks.parse_suites(bench_suite)
        members = json.loads((workdir / "eval.json").read_text())["members"]
        if not all(all(t in m.get(s, {}) for s, ts in suites.items() for t in ts) for m in members.values()):
            t0 = time.perf_counter()
            evaluation.evaluate_workdir(workdir, bench_suite, limit=bench_limit or None, progress=False)
            print(f"[{label}] benchmarks {bench_suite} in {time.perf_counter() - t0:.0f}s", flush=True)
    return {"report": json.loads(done.read_text()), "eval": json.loads((workdir / "eval.json").read_text())}


def run_all(jobs: list[tuple], parallel: int) -> list[dict]:
    """run_arm over jobs (in order), `parallel` at a time in spawned worker processes (one job each, so a worker's
    memory never grows across arms); results in job order."""
    if parallel <= 1:
        return [run_arm(*job) for job in jobs]
    import multiprocessing  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        futures = [pool.submit(run_arm, *job) for job in jobs]
        return [f.result() for f in futures]


def write_tasks(cfg, path: Path) -> None:
    from jaxgrow.data import corpus as corpus_lib  # noqa: PLC0415
    from jaxgrow.data import formats  # noqa: PLC0415
    from jaxgrow.eval import evaluate  # noqa: PLC0415

    if path.exists():
        return
    src = corpus_lib.sources(cfg.data)
    texts = formats.read_documents(src.eval, cfg.data.text_field, "data.eval_files")
    items = evaluate.make_continuation_tasks(texts, n_items=FLAGS.task_items, seed=cfg.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items))


def run(argv) -> None:
    from jaxgrow import config as config_lib  # noqa: PLC0415
    from jaxgrow.eval import lr_fit  # noqa: PLC0415
    from jaxgrow.eval import stats  # noqa: PLC0415
    from jaxgrow.family import checks  # noqa: PLC0415
    from jaxgrow.train import logs  # noqa: PLC0415

    if FLAGS.workdir is None or _CONFIG.value is None:
        raise config_lib.InputError("--config and --workdir are required")
    arms = [a.strip() for a in FLAGS.arms if a.strip()]
    if not arms:
        raise config_lib.InputError(f"--arms: empty list; valid: {list(ARMS)}")
    for a in arms:
        arm_kind(a)
    if len(set(arms)) != len(arms):
        raise config_lib.InputError(f"--arms={','.join(arms)} repeats an arm; each arm must appear once")
    base = _CONFIG.value
    seeds = stats.parse_seeds(FLAGS.seeds if FLAGS.seeds is not None else str(base.seed))
    if len(seeds) < 2:
        raise config_lib.InputError(f"--seeds={','.join(map(str, seeds))}: every claim of the comparison "
                                    "(comparable_quality_at_lower_compute, adjusted_lr_beats_independent, "
                                    "adjusted_beats_fixed, lower_adjacent_kl, ...) is decided on a 95% interval "
                                    "over seeds; give at least 2 seeds, e.g. --seeds=0,1")
    if FLAGS.parallel < 1:
        raise config_lib.InputError(f"--parallel={FLAGS.parallel} must be >= 1")
    checks.validate(base)
    for path in (FLAGS.lr_rule_file, FLAGS.progressive_lr_rule_file):
        if path:
            lr_fit.load_rule_file(path, base)  # refuses a rule fitted for other members before anything runs
    logs.setup()
    arm_cfgs = {(a, s): arm_config(base, a, s, FLAGS.lr_rule_file, FLAGS.progressive_lr_rule_file)
                for a in arms for s in seeds}
    for cfg in arm_cfgs.values():
        checks.validate(cfg)
    workdir = Path(FLAGS.workdir).absolute()
    finished = all((arm_dir(workdir, a, s) / "eval.json").exists() for a, s in arm_cfgs)
    if not finished:  # (a finished set was checked when it was trained; its reports state the epochs)
        check_passes({a: arm_cfgs[(a, seeds[0])] for a in arms}, FLAGS.allow_repeats)
    tasks = workdir / "tasks.jsonl"
    write_tasks(base, tasks)
    # one persistent compilation cache for every arm-seed (worker processes inherit it)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(workdir / "xla_cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    order = [(a, s) for s in seeds for a in arms]  # seed-major: an interrupted run has complete seeds for every arm
    t0 = time.perf_counter()
    # every arm-seed reads the same data: tokenized once, adopted by each run (common.data_donor)
    donor = str(common.data_donor(base.data, base.model.vocab_size, workdir / "data_donor")) if not finished else None
    runs = run_all([(f"{a}/seed{s}", arm_cfgs[(a, s)].to_json(), str(arm_dir(workdir, a, s)), str(tasks),
                     FLAGS.bench_suite, FLAGS.bench_limit, donor) for a, s in order], FLAGS.parallel)
    print(f"all {len(order)} arm-seeds done in {time.perf_counter() - t0:.0f}s ({FLAGS.parallel} at a time)", flush=True)
    results: dict = {a: {} for a in arms}
    for (a, s), r in zip(order, runs):
        results[a][s] = r
    c = comparison.compare(results, seeds)
    (workdir / "comparison.json").write_text(json.dumps(c, indent=2))
    (workdir / "comparison.md").write_text(comparison.markdown(c))
    comparison.plot(c, workdir / "comparison.png")
    print(comparison.markdown(c))
    print(f"wrote {workdir / 'comparison.json'}, comparison.md, comparison.png")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from jaxgrow.family.boundary import script_main  # noqa: PLC0415

    app.run(script_main(run))
