"""`python -m jaxgrow` = `python -m jaxgrow.main` = the `jaxgrow` console script."""

from jaxgrow.cli.main import run


if __name__ == "__main__":
    run()
