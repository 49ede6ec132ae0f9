"""The train wing: ONE stage. Owns the train state, optimizer and loss (cross-entropy, optionally with a frozen
teacher's distillation term) and the jitted sharded steps (trainer.py), the step loop and its hooks (loop.py), LR
schedules, checkpoints, goodput, fault injection and preemption, metrics logs, the compilation cache, and the
process's place in a job (distributed.py). Knows nothing of families or workdir layouts.
May import model, expand, prune, data, storage and config."""
