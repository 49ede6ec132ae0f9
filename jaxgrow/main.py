"""`python -m jaxgrow.main` (the documented entry point) = `jaxgrow` = `python -m jaxgrow`: the command line
lives in jaxgrow/cli/main.py."""

if __name__ == "__main__":  # signals handled from the first moment, before the CLI's imports (train/faults.py)
    from jaxgrow.train import faults

    faults.install()

from jaxgrow.cli.main import main, run  # noqa: E402, F401  (re-exported: `jaxgrow.main.main(argv)`)


if __name__ == "__main__":
    run()
