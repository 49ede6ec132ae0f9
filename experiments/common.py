"""What the experiment scripts share: timing, the reference matmul rate, the member a benchmark picks, config files,
/proc memory counters, and local storage servers for the bucket benchmarks.

A script run as `python experiments/X.py` has experiments/ on its import path, so it imports this module as
`import common`; the package itself comes from the installed `jaxgrow` (`pip install -e .`), never from a path edit.
jax is imported lazily, so scripts that only orchestrate subprocesses (bench_goodput_remote.py) stay light.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------------ timing


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> float:
    """Median wall seconds of `repeats` calls of `fn`, after `warmup` untimed calls (the first one compiles).

    Each call is waited for (`jax.block_until_ready` on its result: arrays and pytrees of them; anything else, a host
    list or a result object, is returned as is), and its result is dropped before the next call starts, so a large
    output is never held twice. `repeats` even: the mean of the two middle times (numpy's median)."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ------------------------------------------------------------------------------------------ the reference matmul rate


def matmul_reference(matmul_n: int = 0) -> tuple[int, Any]:
    """(n, dtype) of the reference matmul on this platform: `matmul_n` (0: 4096 on CPU, 8192 elsewhere), f32 on CPU,
    bf16 elsewhere."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    cpu = jax.devices()[0].platform == "cpu"
    return matmul_n or (4096 if cpu else 8192), jnp.float32 if cpu else jnp.bfloat16


def matmul_flops_per_sec(n: int, dtype, repeats: int = 5) -> float:
    """FLOP/s of a jitted dense n x n matmul (2 n^3 FLOPs): the median of `repeats` timed calls after a compile call;
    the practical peak the benchmarks divide their model FLOP/s by."""
    import jax  # noqa: PLC0415

    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    return 2.0 * n ** 3 / median_seconds(lambda: f(a, b), repeats, warmup=1)


# ---------------------------------------------------------------------------------------------- configs and members


def pick_stage(stages: list, member: str | None):
    """The stage (StageBudget) of member `member`, or the largest (the last) when None."""
    if member is None:
        return stages[-1]
    for s in stages:
        if s.name == member:
            return s
    raise SystemExit(f"error: --member={member}: no such member (members: {', '.join(s.name for s in stages)})")


def load_config(path: str | Path):
    """The ConfigDict `get_config()` of a config file (configs/*.py) returns; a relative path is taken from the
    repository root, as the scripts' subprocesses (run there) take it."""
    path = REPO / path
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# -------------------------------------------------------------------------------------------------------- memory


def proc_status_bytes(key: str, pid: int | str = "self") -> int:
    """A memory line of /proc/PID/status in bytes (`key` with its colon, e.g. "VmHWM:", the peak RSS)."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith(key)).split()[1]) * 1024


# ------------------------------------------------------------------------------------------------- storage servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: Callable[[int], list[str]], tries: int = 100) -> tuple[subprocess.Popen, int]:
    """Starts `command(port)` (a storage server) on a free 127.0.0.1 port and waits until it accepts connections
    (up to `tries` x 0.1 s); (process, port). The caller terminates it."""
    port = free_port()
    proc = subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, port


def start_gcs_emulator(bucket: str) -> tuple[subprocess.Popen, int]:
    """gcp-storage-emulator in memory with `bucket`, run by tests/gcs_emulator.py (a server program, not imported:
    the emulator with the generation headers tensorstore needs); (process, port)."""
    return start_server(lambda port: [sys.executable, str(REPO / "tests" / "gcs_emulator.py"), "start",
                                      "--host=127.0.0.1", f"--port={port}", "--in-memory", f"--default-bucket={bucket}"])


def start_s3_emulator() -> tuple[subprocess.Popen, int]:
    """A moto S3 server; (process, port)."""
    return start_server(lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])


# ------------------------------------------------------------------------------------------ one data cache for many runs


def data_donor(data_cfg, vocab_size: int, directory: Path) -> Path:
    """A directory holding what a run with `data_cfg` would build before it trains: its tokenizer.json and the token
    cache of its raw text (W/data/), made once. Many runs on the same data (sweep points, arm-seeds) adopt it instead
    of each tokenizing the same text again: the same deterministic tokenizer and ids, so the same results."""
    from jaxgrow.data import corpus as corpus_lib  # noqa: PLC0415

    directory = Path(directory)
    if not (directory / "DONE").exists():
        directory.mkdir(parents=True, exist_ok=True)
        corpus = corpus_lib.prepare(data_cfg, vocab_size, directory)
        corpus_lib.save_cache(corpus, directory)
        (directory / "DONE").write_text("")
    return directory


def adopt_data_cache(donor: Path | None, workdir: Path) -> None:
    """Before a run's first start: its tokenizer and token cache copied from `donor` (see data_donor)."""
    import shutil  # noqa: PLC0415

    workdir = Path(workdir)
    if donor is None or workdir.exists():
        return
    tmp = workdir.with_name(workdir.name + ".adopting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(Path(donor) / "tokenizer.json", tmp / "tokenizer.json")
    if (Path(donor) / "data").is_dir():
        shutil.copytree(Path(donor) / "data", tmp / "data")
    tmp.rename(workdir)
