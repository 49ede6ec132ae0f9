"""Logging setup shared by the CLI and the experiment scripts: `jaxgrow: message` lines on stderr."""

import logging
import sys

NOISY = ("absl", "orbax", "jax._src", "tensorflow")


def setup(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="jaxgrow: %(message)s", stream=sys.stderr, force=True)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
