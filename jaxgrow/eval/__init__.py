"""The eval wing: held-out loss and KL, standard benchmarks, the reproduction's comparison and statistics,
LR fits, reports. Imports model, data, storage and config; nothing here trains or knows the pipeline."""
