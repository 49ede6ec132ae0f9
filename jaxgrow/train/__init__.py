"""The train wing: ONE stage (train state, jitted sharded steps, the loop), LR schedules, checkpoints,
goodput, fault injection and preemption, metrics logs. Imports model, expand, data, storage, config."""
