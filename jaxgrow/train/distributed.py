"""The process's place in a job: jax.distributed start-up (only when asked: never unconditionally) and forced host
devices for planning a mesh on a CPU. Both must run before jax is first used (the CLI calls them right after
parsing)."""

from __future__ import annotations

import logging
import os
import sys


log = logging.getLogger("jaxgrow")


def maybe_initialize(mode: str = "auto") -> None:
    """jax.distributed.initialize() when config.distributed is `on`, or `auto` with a coordinator in the environment
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) or a multi-host TPU slice (TPU_WORKER_HOSTNAMES).
    On CPU the processes talk through gloo."""
    env = os.environ
    multi_host_tpu = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    if mode == "off" or (mode == "auto" and not (env.get("JAX_COORDINATOR_ADDRESS") or multi_host_tpu)):
        return
    import jax  # noqa: PLC0415

    kwargs = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None,
                      process_id=int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None)
    if jax.config.jax_platforms in (None, "", "cpu") and env.get("JAX_PLATFORMS", "") in ("", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def force_host_devices(n: int) -> None:
    """On CPU, `n` forced host devices (a plan for a pod's mesh on a laptop). Only before jax is imported, and only
    when the environment does not already force a count."""
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
