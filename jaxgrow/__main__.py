"""`python -m jaxgrow` = `python -m jaxgrow.main` = the `jaxgrow` console script."""

from jaxgrow.train import faults

faults.install()  # signals handled from the first moment, before the CLI's imports (train/faults.py)

from jaxgrow.cli.main import run  # noqa: E402


if __name__ == "__main__":
    run()
