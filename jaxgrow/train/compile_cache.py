"""The persistent XLA compilation cache: a resumed stage (after a preemption, on the same or another slice of the
same shape) loads its compiled train and eval steps instead of recompiling them (minutes for an 8B member on a pod).

config.compile_cache_dir: "" (auto) uses jax's own setting when there is one ($JAX_COMPILATION_CACHE_DIR, or a
program that embeds jaxgrow), else
W/xla_cache for a local workdir, else (a remote workdir) a local directory keyed by the workdir, since a resumed job
usually lands on the same host image; a path (local or gs://: jax 0.10's cache writes through etils.epath) puts it
there; "none" turns it off. A cached executable is the very program XLA would compile, so results are bitwise the
same with or without the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Any

import jax

from jaxgrow import storage


log = logging.getLogger("jaxgrow")


def cache_dir(cfg: Any, workdir: Any) -> str | None:
    """The cache directory a run uses (None: off)."""
    chosen = str(cfg.get("compile_cache_dir", "") or "")
    if chosen.lower() == "none":
        return None
    if chosen:
        return str(storage.as_path(chosen, "compile_cache_dir"))
    if jax.config.jax_compilation_cache_dir:  # set by $JAX_COMPILATION_CACHE_DIR or by the program embedding us
        return jax.config.jax_compilation_cache_dir
    if not storage.is_remote(workdir):
        return str(storage.join(workdir, "xla_cache"))
    digest = hashlib.sha256(str(workdir).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"jaxgrow-xla-cache-{digest}")


def configure(cfg: Any, workdir: Any) -> str | None:
    """Points jax's persistent cache at cache_dir(cfg, workdir) before the first compilation of the run."""
    path = cache_dir(cfg, workdir)
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        log.debug("persistent compilation cache: %s", path)
    return path
