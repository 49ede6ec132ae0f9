"""The eval wing: held-out loss and KL between models (evaluate.py), standard benchmarks (benchmarks/), the
reproduction's comparison and statistics (comparison.py, stats.py), LR fits (lr_fit.py), and the report: report.json,
report.md, plots and the one writer of eval.json (report.py). Nothing here trains or knows the pipeline.
May import model, data, storage and config."""
