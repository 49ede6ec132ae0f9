"""Standard benchmarks offline: task readers (tasks.py) -> scoring requests (requests.py) -> batched jitted
scoring and lm-eval's metrics (scoring.py) -> eval.json and report tables (results.py)."""
