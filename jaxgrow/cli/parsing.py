"""Reading a command line: absl parsing with one-line errors, the --config file (loaded by config_flags while
parsing) checked to be a run config, paths, and the flags that do not apply to a subcommand. Every error here is a
UsageError: one line and exit code 2."""

from __future__ import annotations

import logging
import re
import shlex
import sys

import ml_collections
from absl import flags

from jaxgrow import __version__
from jaxgrow.cli import flags as cli_flags
from jaxgrow.config import UsageError


log = logging.getLogger("jaxgrow")
FLAGS = flags.FLAGS
ARGV: list[str] = []  # the command line being run (expand and prune repeat its --config arguments in their hints)


def config_path(argv: list[str]) -> str | None:
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


def _load_error(e: OSError) -> str:
    detail = str(e.__cause__ or e).strip().splitlines()[-1].strip()
    return f"--config={config_path(ARGV or sys.argv)}: cannot load it ({detail})"


def parse(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors. config_flags loads the --config file while parsing: a file that
    cannot be read, does not compile, has no get_config or whose get_config raises is one line."""
    path = config_path(argv)
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        text = str(e).strip()
        if "Error whilst parsing config file" in text:  # config_flags wraps the config's own exception
            raise UsageError(f"--config={path}: get_config() raised {text.splitlines()[-1].strip()}") from None
        raise UsageError(text.splitlines()[0]) from None
    except OSError as e:  # config_flags: the config file cannot be loaded
        raise UsageError(_load_error(e)) from None
    except SyntaxError as e:
        raise UsageError(f"--config={path}: does not compile ({e.msg}, line {e.lineno})") from None
    except AttributeError as e:
        if "get_config" in str(e.__context__ or e):
            raise UsageError(f"--config={path}: defines no get_config(); a config file is a Python file whose "
                             "get_config() returns an ml_collections.ConfigDict (see configs/*.py)") from None
        raise UsageError(_unknown_key_error(e, argv)) from None  # an unknown key in --config.a.b=v
    except Exception as e:  # noqa: BLE001  (the user's get_config() raised, or an override could not be cast)
        if path is None:
            raise
        raise UsageError(f"--config={path}: get_config() raised {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return rest


def check_flags_apply(command: str, argv: list[str]) -> None:
    """A jaxgrow flag given on the command line that the subcommand does not take is an error."""
    allowed = set(cli_flags.COMMAND_FLAGS[command])
    given = [name for name in sorted(cli_flags.jaxgrow_flags()) if FLAGS[name].present]
    if any(a.startswith(("--config.", "-config.")) for a in argv[1:]):
        given.append("config")
    for name in given:
        if name not in allowed:
            users = [c for c in cli_flags.COMMANDS if name in cli_flags.COMMAND_FLAGS[c]]
            raise UsageError(f"--{name} does not apply to `{command}` (it is a flag of: {', '.join(users) or 'none'}); "
                             f"`{command}` takes " + ", ".join(f"--{f}" for f in cli_flags.COMMAND_FLAGS[command]))


def _warn_shadowed_model_overrides(cfg, argv: list[str]) -> None:
    """`--config.model.X=v` on a family whose members override X changes nothing for them: say which."""
    from jaxgrow import config as config_lib  # noqa: PLC0415

    if not len(cfg.members):
        return
    for arg in argv:
        key = arg.split("=", 1)[0][len("--config.model."):] if arg.startswith("--config.model.") else None
        if key not in config_lib.MODEL_KEYS:
            continue
        shadowing = [name for name, entry in cfg.members.items() if key in entry]
        if shadowing:
            every = len(shadowing) == len(cfg.members)
            log.warning("%s has no effect on %s: %s override model.%s (set --config.members.<name>.%s instead)",
                        arg.split("=", 1)[0], "any member" if every else "members " + ", ".join(shadowing),
                        ", ".join(f"members.{n}" for n in shadowing), key, key)


def config():
    """The loaded config (config_flags loads lazily; errors become UsageError), checked to be a run config of the
    right types (config.check_types: one line naming the key)."""
    from jaxgrow import config as config_lib  # noqa: PLC0415

    try:
        cfg = cli_flags.CONFIG.value
        if type(cfg).__name__ == "_ErrorConfig":  # config_flags' stand-in for a config that failed to load
            cfg.keys()  # raises the load error (OSError)
    except OSError as e:
        raise UsageError(_load_error(e)) from None
    if cfg is None:
        raise UsageError("--config is required (e.g. --config configs/family_tiny.py)")
    path = config_path(ARGV or sys.argv)
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise UsageError(f"--config={path}: get_config() returned a {type(cfg).__name__}, not an "
                         "ml_collections.ConfigDict; start from jaxgrow.config.base_config()")
    missing = sorted(set(config_lib.base_config()) - set(cfg.keys()))
    if missing:
        raise UsageError(f"--config={path}: the config lacks {missing}; start from jaxgrow.config.base_config()")
    try:
        config_lib.check_types(cfg)
    except config_lib.ConfigError as e:
        raise UsageError(f"--config={path}: {e}") from None
    _warn_shadowed_model_overrides(cfg, ARGV or sys.argv)
    return cfg


def path(value: str, flag: str):
    """A local (made absolute: orbax needs that) or remote (gs://, s3://) epath.Path; an unknown scheme or a
    missing filesystem package is an InputError (exit 2, nothing written)."""
    from jaxgrow import storage  # noqa: PLC0415

    return storage.as_path(value, flag)


def workdir(required: bool = True):
    if FLAGS.workdir is None:
        if required:
            raise UsageError("--workdir is required")
        return None
    return path(FLAGS.workdir, "--workdir")


def member() -> str | None:
    """--member NAME, or None for every finished member (--all, or neither flag)."""
    if FLAGS.all and FLAGS.member:
        raise UsageError("give --member NAME or --all, not both")
    return None if FLAGS.all else FLAGS.member


def config_args(argv: list[str]) -> list[str]:
    """The --config file and --config.key=value overrides of a command line, as given (shell-quoted)."""
    out, it = [], iter(argv[1:])
    for a in it:
        if a == "--config":
            out += [a, next(it, "")]
        elif a.startswith(("--config=", "--config.")):
            out.append(a)
    return [shlex.quote(a) for a in out]


def help_request(argv: list[str]) -> str | None:
    """The help (or version) text when argv asks for it (before parsing, so a broken --config cannot hide it)."""
    if "--version" in argv[1:]:
        import jax  # noqa: PLC0415

        return f"jaxgrow {__version__} (jax {jax.__version__}, Python {sys.version.split()[0]})\n"
    if not any(a in cli_flags.HELP_FLAGS or a.startswith("--help=") for a in argv[1:]):
        return None
    if "--helpfull" in argv[1:]:
        return FLAGS.get_help()
    command = next((a for a in argv[1:] if a in cli_flags.COMMANDS), None)
    return cli_flags.help_text(command)


def verbosity() -> int:
    try:
        return int(FLAGS.verbosity) if FLAGS.is_parsed() else -1
    except (AttributeError, flags.Error):
        return -1
