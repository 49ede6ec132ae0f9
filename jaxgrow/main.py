"""`python -m jaxgrow.main` (the documented entry point) = `jaxgrow` = `python -m jaxgrow`: the command line
lives in jaxgrow/cli/main.py."""

from jaxgrow.cli.main import main, run  # noqa: F401  (re-exported: `jaxgrow.main.main(argv)`)


if __name__ == "__main__":
    run()
