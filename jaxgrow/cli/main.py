"""Command line: parses, dispatches, prints. The work of every command lives in its wing.

    jaxgrow [train] --config configs/family_tiny.py --workdir W [--config.key=value ...]
    jaxgrow expand --config DST.py --from CKPT_DIR --workdir OUT
    jaxgrow prune --config SMALL.py --from CKPT_DIR --workdir OUT
    jaxgrow plan --config configs/paper_family.py [--config.mesh.fsdp=N] [--devices N]
    jaxgrow evaluate --workdir W --tasks FILE.jsonl [FILE.jsonl ...] [--member NAME]
    jaxgrow evaluate --workdir W --suite core [--member NAME] [--limit N] [--shots K] [--log_samples]
    jaxgrow evaluate --workdir W --speculative [--gamma 4]
    jaxgrow export --workdir W [--member NAME | --all] --out DIR
    jaxgrow import --hf DIR --workdir W
    jaxgrow sample --workdir W [--member NAME | --all] --prompt "..." [--top_p P]
    jaxgrow sample --workdir W --member LARGE --draft SMALL [--gamma 4] --prompt "..."
    jaxgrow tokenize --inputs GLOBS --out DIR [--tokenizer PATH | --vocab_size N] [--workers K]
    jaxgrow [COMMAND] --help

`jaxgrow`, `python -m jaxgrow` and `python -m jaxgrow.main` are the same command. Each subcommand accepts only the
flags listed for it in cli/flags.py's COMMAND_FLAGS. Bad input exits with code 2 and one line naming the field or
file; nothing is written then. A preempted run exits 143 (SIGTERM) or 130 (SIGINT) after its checkpoint; a workdir held
by a live process on another host exits 75 (try again later) after waiting for its lease.
"""

from __future__ import annotations

import logging
import math
import shlex
import signal
import sys
import time
from pathlib import Path

from absl import flags

from jaxgrow.cli import flags as cli_flags, parsing
from jaxgrow.config import InputError, UsageError
from jaxgrow.family import boundary
from jaxgrow.family.boundary import fail
from jaxgrow.train import distributed, logs


log = logging.getLogger("jaxgrow")
FLAGS = flags.FLAGS


def cmd_train(rest: list[str]) -> int:
    from jaxgrow.family import lock, pipeline as family  # noqa: PLC0415
    from jaxgrow.train import faults, trainer  # noqa: PLC0415

    cfg, workdir = parsing.config(), parsing.workdir()
    distributed.maybe_initialize(cfg.distributed)
    t0 = time.perf_counter()
    with faults.SignalFlag() as signals:
        try:
            setup, result = family.train_and_report(cfg, workdir, signals)
        except faults.Preempted as p:
            lock.release(workdir)  # now, so a job restarted on other hosts takes the workdir at once
            log.warning("stopped by %s after saving a checkpoint; rerun the same command to continue", p)
            # non-zero, so Kubernetes Jobs, JobSet and SLURM --requeue restart a half-trained family (shell
            # convention: 128 + the signal number)
            return 128 + p.signum
        except trainer.NonFiniteLoss as e:
            return fail(str(e), code=1)
    if signals.signum is not None:  # arrived after the last step: the run is complete, but the scheduler asked to stop
        log.warning("stopped by %s after the run completed; rerunning only re-renders the report",
                    signal.Signals(signals.signum).name)
        return 128 + signals.signum
    last = result["members"][-1]
    what = "already finished" if setup.finished else f"done in {time.perf_counter() - t0:.1f}s"
    print(f"jaxgrow: {what}: {len(result['members'])} member(s), {result['mode']}, "
          f"{result['total_train_flops']:.3g} train FLOPs, last eval_loss {last['eval_loss']:.4f}; "
          f"report: {workdir / 'report.md'}")
    return 0


def _derive(kind: str) -> int:
    """`expand` or `prune`: a new run from --from's newest checkpoint."""
    from jaxgrow.family import derive  # noqa: PLC0415

    cfg = parsing.config()
    if not getattr(FLAGS, "from"):
        raise UsageError("--from is required: a checkpoint directory (members/<name> or stages/<k>-<name>)")
    config_args = " ".join(parsing.config_args(parsing.ARGV))
    workdir = parsing.workdir()
    source = getattr(FLAGS, "from")
    command = f"jaxgrow {kind} {config_args} --from {shlex.quote(source)} --workdir {shlex.quote(FLAGS.workdir)}"
    make = derive.expand_checkpoint if kind == "expand" else derive.prune_checkpoint
    out = make(cfg, parsing.path(source, "--from"), workdir, command=command)
    print(f"jaxgrow: {'expanded' if kind == 'expand' else 'pruned'} checkpoint written to {out}; continue with: "
          f"jaxgrow train {config_args} --workdir {shlex.quote(FLAGS.workdir)}")
    return 0


def cmd_plan(rest: list[str]) -> int:
    cfg = parsing.config()
    if FLAGS.devices < 0:
        raise UsageError(f"--devices={FLAGS.devices} must be >= 0 (0: the mesh's product, else 8)")
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    distributed.force_host_devices(FLAGS.devices or (math.prod(sizes) * cfg.mesh.dcn_data if -1 not in sizes else 8))
    from jaxgrow.cli import plan  # noqa: PLC0415

    plan.print_plan(cfg, chip=FLAGS.chip, hbm_gib=FLAGS.hbm_gib)
    return 0


def cmd_evaluate(rest: list[str]) -> int:
    from jaxgrow.family import evaluation  # noqa: PLC0415

    files, workdir = [f for f in FLAGS.tasks + rest if f], parsing.workdir()
    if FLAGS.suite is not None:
        from jaxgrow.eval.benchmarks import results as bench_results, tasks as bench_tasks  # noqa: PLC0415

        if files:
            raise UsageError("give either --suite or --tasks, not both (run evaluate twice; results are merged)")
        result = evaluation.evaluate_workdir(workdir, FLAGS.suite, FLAGS.member, FLAGS.limit, FLAGS.shots,
                                             FLAGS.log_samples)
        for name, suites in result["members"].items():
            for suite, tasks in suites.items():
                primary = bench_tasks.PRIMARY
                print(f"{name} [{suite}]: " + ", ".join(f"{t} {primary[t]} {bench_results.cell(v, primary[t])}"
                                                       for t, v in tasks.items()))
    else:
        _evaluate_tasks(evaluation, files, workdir)
    print(f"jaxgrow: wrote {workdir / 'eval.json'}")
    return 0


def _evaluate_tasks(evaluation, files: list[str], workdir) -> None:
    if FLAGS.shots or FLAGS.log_samples:
        raise UsageError("--shots and --log_samples apply to --suite (standard benchmarks), not to --tasks files")
    if FLAGS.speculative:
        from jaxgrow.serve import speculative  # noqa: PLC0415

        speculative.check_gamma(FLAGS.gamma)
    result = evaluation.evaluate_members(workdir, files, FLAGS.member, FLAGS.limit)
    if FLAGS.speculative:
        for name, acc in evaluation.evaluate_speculative(workdir, FLAGS.gamma).items():
            result["members"].setdefault(name, {})["draft_acceptance"] = acc
    for name, r in result["members"].items():
        if "eval_loss" in r:
            tasks = ", ".join(f"{t}: {v['acc_norm']:.3f}" for t, v in r["tasks"].items())
            print(f"{name}: eval_loss {r['eval_loss']:.4f}" + (f"; {tasks}" if tasks else ""))
        if r.get("draft_acceptance"):
            a = r["draft_acceptance"]
            print(f"{name}: drafting for {a['target']}: acceptance {a['temperature_0']:.3f} at temperature 0, "
                  f"{a['temperature_1']:.3f} at temperature 1 (gamma {a['gamma']})")


def cmd_export(rest: list[str]) -> int:
    from jaxgrow.family import hf_runs  # noqa: PLC0415

    if not FLAGS.out:
        raise UsageError("--out is required")
    for path in hf_runs.export_workdir(parsing.workdir(), parsing.path(FLAGS.out, "--out"), parsing.member(),
                                       FLAGS.max_position_embeddings or None, FLAGS.export_dtype):
        print(f"jaxgrow: exported {path}")
    return 0


def cmd_import(rest: list[str]) -> int:
    from jaxgrow.family import hf_runs  # noqa: PLC0415

    if not FLAGS.hf:
        raise UsageError("--hf DIR is required")
    out = hf_runs.import_to_workdir(Path(FLAGS.hf).expanduser(), parsing.workdir())
    print(f"jaxgrow: imported {FLAGS.hf} into {out}")
    return 0


def cmd_sample(rest: list[str]) -> int:
    from jaxgrow.family import serving  # noqa: PLC0415

    try:
        FLAGS.prompt.encode("utf-8")  # bytes that are not UTF-8 (e.g. $'\xff\xfe') arrive as lone surrogates
    except UnicodeEncodeError:
        raise UsageError(f"--prompt={FLAGS.prompt!r} is not valid UTF-8 text") from None
    if FLAGS.draft is None:
        results = serving.sample_workdir(parsing.workdir(), parsing.member(), FLAGS.prompt, FLAGS.max_new_tokens,
                                         FLAGS.temperature, FLAGS.top_k, FLAGS.seed, FLAGS.top_p)
        for name, text in results.items():
            print(f"=== {name} ===\n{FLAGS.prompt}{text}\n")
        return 0
    if FLAGS.all or not FLAGS.member:
        raise UsageError("--draft needs --member NAME (the target model), not --all")
    draft_workdir = parsing.path(FLAGS.draft_workdir, "--draft_workdir") if FLAGS.draft_workdir else None
    r = serving.sample_speculative_workdir(parsing.workdir(), FLAGS.member, FLAGS.draft, draft_workdir, FLAGS.prompt,
                                           FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.top_k, FLAGS.top_p,
                                           FLAGS.seed, FLAGS.gamma)
    print(f"=== {FLAGS.member} (draft {FLAGS.draft}, gamma {FLAGS.gamma}) ===\n{FLAGS.prompt}{r['text']}\n")
    print(f"acceptance rate {r['acceptance_rate']:.3f}, {r['tokens_per_target_call']:.2f} tokens per target call, "
          f"speedup over {FLAGS.member} alone {r['speedup']:.2f}x ({r['target_seconds']:.3f}s alone, "
          f"{r['speculative_seconds']:.3f}s speculative; each timed after a warm-up run)")
    return 0


def cmd_tokenize(rest: list[str]) -> int:
    from jaxgrow import storage  # noqa: PLC0415
    from jaxgrow.data import formats, tokenize  # noqa: PLC0415
    from jaxgrow.family import lock  # noqa: PLC0415

    out = parsing.path(FLAGS.out, "--out") if FLAGS.out else None
    if FLAGS.inputs and out is not None:  # an output that holds (or is inside) an input would overwrite what it reads
        for path in formats.expand_inputs(FLAGS.inputs, "--inputs"):
            storage.check_apart(out, path, "--out", "the input")
        if not out.exists() or out.is_dir():  # (a file there is refused by tokenize's own checks)
            lock.check_free(out)  # one writer per --out, as per workdir
    existed = out is not None and out.exists()
    t0 = time.perf_counter()
    try:
        manifest = tokenize.run_command(FLAGS.inputs or "", FLAGS.out or "", FLAGS.tokenizer, FLAGS.vocab_size,
                                        FLAGS.text_field, FLAGS.workers, FLAGS.eos_token, FLAGS.bos_token,
                                        FLAGS.shard_tokens, before_write=lambda: _take(lock, out))
    except InputError:
        if out is not None and not existed:  # refused mid-way: the lock's directory goes too, nothing is left
            lock.release(out)
            storage.remove_tree(out)
        raise
    finally:
        if out is not None:
            lock.release(out)
    dt = time.perf_counter() - t0
    print(f"jaxgrow: tokenized {len(manifest['sources'])} file(s), {manifest['documents']} documents, "
          f"{manifest['total_tokens']} tokens ({manifest['dtype']}, {len(manifest['shards'])} shards) in {dt:.1f}s "
          f"({manifest['total_tokens'] / max(dt, 1e-9):.0f} tokens/s) into {FLAGS.out}")
    return 0


def _take(lock, out) -> None:
    """--out's writer lock, once the inputs are valid (the lock file lives in --out, so --out is made first)."""
    out.mkdir(parents=True, exist_ok=True)
    lock.acquire(out, "tokenize")


HANDLERS = {"train": cmd_train, "expand": lambda rest: _derive("expand"), "prune": lambda rest: _derive("prune"),
            "plan": cmd_plan, "evaluate": cmd_evaluate, "export": cmd_export, "import": cmd_import,
            "sample": cmd_sample, "tokenize": cmd_tokenize}
POSITIONAL = ("evaluate",)  # commands that take positional arguments


def _dispatch(argv: list[str]) -> int:
    rest = parsing.parse(argv)[1:]
    logs.setup(verbosity=parsing.verbosity())  # absl's --verbosity=1: library log lines and tracebacks of faults
    command = rest.pop(0) if rest and rest[0] in cli_flags.COMMANDS else "train"
    if command not in POSITIONAL and rest:
        raise UsageError(f"unexpected arguments {rest}; commands: {list(cli_flags.COMMANDS)} (see --help)")
    parsing.check_flags_apply(command, argv)
    return HANDLERS[command](rest)


def main(argv: list[str] | None = None) -> int:
    """The command line. SIGINT and SIGTERM end it at once with one line and 130 / 143 (the train loop's steps: a
    checkpoint first), whatever it is doing (faults.install; handlers this call installed are put back when it
    returns); a failed background checkpoint save ends it with one line and 1 (faults.HardExit)."""
    from jaxgrow.train import faults  # noqa: PLC0415  (no jax import: the handlers are in place within ~0.1 s)

    installed_here = faults.install()
    try:
        logs.setup()
        argv = list(sys.argv if argv is None else argv)
        parsing.ARGV[:] = argv
        text = parsing.help_request(argv)
        if text is not None:
            sys.stdout.write(text)
            return 0
        return boundary.boundary(lambda: faults.hard_exits(lambda: _dispatch(argv)), parsing.verbosity)
    finally:
        if installed_here:
            faults.uninstall()


def run() -> None:
    """The `jaxgrow` console script."""
    from jaxgrow.train import faults  # noqa: PLC0415

    faults.install()  # first, and kept until the process ends: main() leaves them in place
    faults.leave(main())  # without the interpreter's shutdown (see faults.leave); an uncaught bug still unwinds
