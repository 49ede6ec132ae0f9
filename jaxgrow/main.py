"""Command line: parses, validates, dispatches. No logic of its own.

    python -m jaxgrow.main [train] --config configs/family_tiny.py --workdir W [--config.key=value ...]
    python -m jaxgrow.main expand --config DST.py --from CKPT_DIR --workdir OUT
    python -m jaxgrow.main plan --config configs/paper_family.py [--config.mesh.fsdp=N]
    python -m jaxgrow.main evaluate --workdir W --tasks FILE.jsonl [FILE.jsonl ...]
    python -m jaxgrow.main export --workdir W (--member NAME | --all) --out DIR
    python -m jaxgrow.main import --hf DIR --workdir W
    python -m jaxgrow.main sample --workdir W [--member NAME | --all] --prompt "..."

Bad input exits with code 2 and one line naming the field or file; nothing is written then.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from jaxgrow import logs
from jaxgrow.config import InputError

COMMANDS = ("train", "expand", "plan", "evaluate", "export", "import", "sample")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config: a Python file with get_config().",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, reports).")
flags.DEFINE_string("from", None, "expand: checkpoint directory to grow (a members/<name> or stages/<k>-<name> dir).")
flags.DEFINE_list("tasks", [], "evaluate: multiple-choice JSONL task files (comma-separated or repeated positionally).")
flags.DEFINE_string("member", None, "export/sample: member name.")
flags.DEFINE_bool("all", False, "export/sample: every member.")
flags.DEFINE_string("out", None, "export: output directory.")
flags.DEFINE_enum("export_dtype", "float32", ["float32", "bfloat16"], "export: weight dtype in the safetensors files.")
flags.DEFINE_string("hf", None, "import: Hugging Face Llama checkpoint directory.")
flags.DEFINE_string("prompt", "", "sample: prompt text.")
flags.DEFINE_integer("max_new_tokens", 40, "sample: tokens to generate.")
flags.DEFINE_float("temperature", 0.0, "sample: 0 = greedy.")
flags.DEFINE_integer("top_k", 0, "sample: keep the k most likely tokens (0 = all).")
flags.DEFINE_integer("seed", 0, "sample: sampling seed.")
flags.DEFINE_integer("devices", 0, "plan: forced host (CPU) devices to plan on (0: the mesh's product, else 8).")
FLAGS = flags.FLAGS

log = logging.getLogger("jaxgrow")


class UsageError(ValueError):
    """A malformed command line."""


def _fail(message: str, code: int = 2) -> int:
    print(f"jaxgrow: error: {message}", file=sys.stderr)
    return code


def _parse(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (raises UsageError)."""
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        raise UsageError(str(e).splitlines()[0]) from None
    except OSError as e:  # config_flags: the config file cannot be loaded
        raise UsageError(_config_load_error(e)) from None
    except AttributeError as e:  # config_flags: unknown key in --config.a.b=v
        key = str(e.__context__ or e).strip("\"'")
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
        raise UsageError(f"{bad[0] if bad else '--config'}: unknown config key {key!r} "
                         "(every key is listed with a comment in jaxgrow/config.py)") from None
    return rest


def _config_load_error(e: OSError) -> str:
    detail = str(e.__cause__ or e).strip().splitlines()[-1].strip()
    path = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), None)
    if path is None and "--config" in sys.argv[:-1]:
        path = sys.argv[sys.argv.index("--config") + 1]
    return f"--config={path}: cannot load it ({detail})"


def _config():
    """The loaded config (config_flags loads lazily; errors become UsageError)."""
    try:
        cfg = _CONFIG.value
        if cfg is not None:
            cfg.keys()  # a config that failed to load raises on first use
    except OSError as e:
        raise UsageError(_config_load_error(e)) from None
    if cfg is None:
        raise UsageError("--config is required (e.g. --config configs/family_tiny.py)")
    return cfg


def _workdir(required: bool = True) -> Path | None:
    if FLAGS.workdir is None:
        if required:
            raise UsageError("--workdir is required")
        return None
    return Path(FLAGS.workdir).expanduser().absolute()  # orbax needs absolute paths


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


def cmd_train() -> int:
    from jaxgrow import family, train  # noqa: PLC0415

    cfg = _config()
    workdir = _workdir()
    _maybe_init_distributed(cfg)
    t0 = time.perf_counter()
    with train.SignalFlag() as signals:
        try:
            setup = family.run(cfg, workdir, signals)
        except train.Preempted as p:
            log.warning("stopped by %s after saving a checkpoint; rerun the same command to continue", p)
            return 0 if p.signum == signal.SIGTERM else 130
        except train.NonFiniteLoss as e:
            return _fail(str(e), code=1)
    result = family.write_report(setup)
    last = result["members"][-1]
    print(f"jaxgrow: done in {time.perf_counter() - t0:.1f}s: {len(result['members'])} member(s), "
          f"{result['mode']}, {result['total_train_flops']:.3g} train FLOPs, last eval_loss {last['eval_loss']:.4f}; "
          f"report: {workdir / 'report.md'}")
    return 0


def cmd_expand() -> int:
    from jaxgrow import commands  # noqa: PLC0415

    cfg = _config()
    if not getattr(FLAGS, "from"):
        raise UsageError("--from is required: a checkpoint directory (members/<name> or stages/<k>-<name>)")
    out = commands.expand_checkpoint(cfg, Path(getattr(FLAGS, "from")).expanduser().absolute(), _workdir())
    print(f"jaxgrow: expanded checkpoint written to {out}; train with --workdir {FLAGS.workdir} to continue")
    return 0


def _force_host_devices(cfg) -> None:
    """On CPU, plan on N forced host devices (must be set before jax is imported)."""
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    n = FLAGS.devices or (math.prod(sizes) * cfg.mesh.dcn_data if -1 not in sizes else 8)
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()


def cmd_plan() -> int:
    cfg = _config()
    _force_host_devices(cfg)
    from jaxgrow import plan  # noqa: PLC0415

    plan.print_plan(cfg)
    return 0


def cmd_evaluate(rest: list[str]) -> int:
    from jaxgrow import commands  # noqa: PLC0415

    files = [f for f in FLAGS.tasks + rest if f]
    result = commands.evaluate_members(_workdir(), files)
    for name, r in result["members"].items():
        tasks = ", ".join(f"{t}: {v['acc_norm']:.3f}" for t, v in r["tasks"].items())
        print(f"{name}: eval_loss {r['eval_loss']:.4f}" + (f"; {tasks}" if tasks else ""))
    print(f"jaxgrow: wrote {_workdir() / 'eval.json'}")
    return 0


def cmd_export() -> int:
    from jaxgrow import hf  # noqa: PLC0415

    if not FLAGS.out:
        raise UsageError("--out is required")
    if not FLAGS.all and not FLAGS.member:
        raise UsageError("give --member NAME or --all")
    written = hf.export_workdir(_workdir(), Path(FLAGS.out).expanduser(), None if FLAGS.all else FLAGS.member,
                                dtype=FLAGS.export_dtype)
    for path in written:
        print(f"jaxgrow: exported {path}")
    return 0


def cmd_import() -> int:
    from jaxgrow import hf  # noqa: PLC0415

    if not FLAGS.hf:
        raise UsageError("--hf DIR is required")
    out = hf.import_to_workdir(Path(FLAGS.hf).expanduser(), _workdir())
    print(f"jaxgrow: imported {FLAGS.hf} into {out}")
    return 0


def cmd_sample() -> int:
    from jaxgrow import hf  # noqa: PLC0415

    results = hf.sample_workdir(_workdir(), None if FLAGS.all else FLAGS.member, FLAGS.prompt,
                                FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.top_k, FLAGS.seed)
    for name, text in results.items():
        print(f"=== {name} ===\n{FLAGS.prompt}{text}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    argv = list(sys.argv if argv is None else argv)
    try:
        rest = _parse(argv)[1:]
        command = rest.pop(0) if rest and rest[0] in COMMANDS else "train"
        if command not in ("evaluate",) and rest:
            raise UsageError(f"unexpected arguments {rest}; commands: {list(COMMANDS)}")
        if command == "evaluate":
            return cmd_evaluate(rest)
        return {"train": cmd_train, "expand": cmd_expand, "plan": cmd_plan, "export": cmd_export,
                "import": cmd_import, "sample": cmd_sample}[command]()
    except KeyboardInterrupt:
        return _fail("interrupted", code=130)
    except (UsageError, InputError) as e:
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


if __name__ == "__main__":
    sys.exit(main())
