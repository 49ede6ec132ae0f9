"""The one exception boundary of every entry point (the CLI and the experiment scripts): what goes wrong becomes
one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import sys
from typing import Any, Callable

from jaxgrow.config import InputError


class UsageError(ValueError):
    """A malformed command line."""


def fail(message: str, code: int = 2) -> int:
    print(f"jaxgrow: error: {message}", file=sys.stderr)
    return code


def boundary(fn: Callable[[], int | None]) -> int:
    """The one exception boundary of every entry point (the CLI and the experiment scripts): bad input is one line
    and exit code 2; Ctrl-C during setup is exit 130."""
    try:
        return fn() or 0
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    except (UsageError, InputError) as e:
        return fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def script_main(run_fn: Callable[[list[str]], Any]) -> Callable[[list[str]], None]:
    """An `absl.app.run` main for an experiment script: `run_fn(argv)` inside the CLI's exception boundary."""

    def main_fn(argv: list[str]) -> None:
        sys.exit(boundary(lambda: run_fn(argv)))

    return main_fn
