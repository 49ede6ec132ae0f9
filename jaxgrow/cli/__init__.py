"""The cli wing: flags and dispatch (main.py), the workdir-level commands (expand, evaluate, export, import,
sample), and `plan`. The top of the package: it may import every wing, and nothing imports it."""
