"""`python -m jaxgrow` = `python -m jaxgrow.main` = the `jaxgrow` console script."""

from jaxgrow.main import run

if __name__ == "__main__":
    run()
