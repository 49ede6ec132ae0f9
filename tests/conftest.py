"""Test setup: 8 forced host CPU devices (set before jax is imported) and shared fixtures.

The CI budget (issue #28): `.ci/run` runs both suites on a 2-core CPU machine in at most 40 minutes, and prints the
slowest tests of each (`--durations`), so every CI log says where the time goes. To keep room for the next tests:
a new slow test costs at most 60 s on 2 cores, or reuses a shared fixture (`tiny_family`: a finished run to read,
copy with shutil.copytree or continue; `bpe`; the emulators) instead of training its own family; it uses the smallest
budget that exercises its property (a kill test needs a checkpoint and a step after it, not a whole stage) and the
fewest processes and devices that show it. Tests run in parallel (pytest-xdist) and must not share ports, temp dirs
or output paths (free ports from the OS, tmp_path for everything).
"""

import contextlib
import os

# 8 forced host devices for the sharding tests; LLVM optimisation level 0 compiles the many small
# test programs ~3x faster (both sides of every comparison run under the same flags).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import atexit  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# One XLA compilation cache for every CLI subprocess of the session: the many runs of the same tiny
# family (kills, resumes, reruns) compile identical programs, and a cached executable is the very
# same code, so bitwise comparisons between runs are unaffected. Removed when the session ends.
XLA_CACHE = tempfile.mkdtemp(prefix="jaxgrow-test-xla-cache-")
atexit.register(shutil.rmtree, XLA_CACHE, ignore_errors=True)


def _cli_env(env: dict | None, devices: int) -> dict:
    full_env = dict(os.environ)
    full_env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    full_env["JAX_PLATFORMS"] = "cpu"
    full_env.setdefault("JAX_COMPILATION_CACHE_DIR", XLA_CACHE)
    full_env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    full_env.update(env or {})
    return full_env


def run_cli(*args: str, env: dict | None = None, check: bool = False, timeout: float = 600,
            devices: int = 1, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs `python -m jaxgrow.main ARGS` in a subprocess on `devices` forced CPU devices (from the repository root,
    or `cwd`)."""
    proc = subprocess.run([sys.executable, "-m", "jaxgrow.main", *args], cwd=cwd or REPO, env=_cli_env(env, devices),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"jaxgrow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def run_cli_many(arg_lists: list[tuple], parallel: int = 3, timeout: float = 600,
                 envs: list[dict | None] | None = None) -> list[subprocess.CompletedProcess]:
    """run_cli for independent command lines, `parallel` at a time (each is mostly a single-threaded
    Python start-up, so this shortens wall time on a few cores), each with its env (envs[i], optional); results
    in input order."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda args, env: run_cli(*args, env=env, timeout=timeout), arg_lists,
                             envs or [None] * len(arg_lists)))


# The tiny family at a fraction of its budget: shared by every test that needs trained members.
TINY_FAMILY_ARGS = ("--config", "configs/family_tiny.py", "--config.budget_scale=0.15",
                    "--config.log.progress=False", "--config.log.eval_every_steps=10")


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory) -> Path:
    """A finished progressive run of configs/family_tiny.py (reduced budget); treat as read-only: it is one
    directory for the whole session, shared by the xdist workers (the first to need it trains it, under a file
    lock, while the other waits), so a test that writes to a run works on a copy."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' base temps are siblings in the session's directory
        base = base.parent
    workdir = base / "tiny_family_shared"
    with open(base / "tiny_family_shared.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes (or its process dies)
        if not (workdir / "report.json").exists():  # not yet trained, or a build that died half-way
            shutil.rmtree(workdir, ignore_errors=True)
            run_cli(*TINY_FAMILY_ARGS, "--workdir", str(workdir), check=True)
    assert json.loads((workdir / "report.json").read_text())["members"]
    return workdir


@pytest.fixture(scope="module")
def bpe():
    """A 512-token byte-level BPE trained on generated documents (data_common.make_docs)."""
    from data_common import make_docs  # noqa: PLC0415
    from jaxgrow.data import tokenizers  # noqa: PLC0415

    return tokenizers.describe(tokenizers.train_bpe(make_docs(300, seed=9), 512))


@pytest.fixture(scope="session")
def mistral_tokenizer(tmp_path_factory) -> Path:
    """Mistral-7B-v0.1's published SentencePiece tokenizer (shipped by PyPI mistral-common),
    converted to a tokenizer.json with transformers."""
    mc = pytest.importorskip("mistral_common")
    transformers = pytest.importorskip("transformers")
    src = Path(mc.__file__).parent / "data" / "tokenizer.model.v1"
    d = tmp_path_factory.mktemp("mistral")
    shutil.copyfile(src, d / "tokenizer.model")
    tok = transformers.LlamaTokenizer.from_pretrained(str(d))
    tok.backend_tokenizer.save(str(d / "tokenizer.json"))
    return d / "tokenizer.json"


@pytest.fixture(scope="session")
def devices8():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (forced host) devices")
    return jax.devices()[:8]


def _forget_filesystems() -> None:
    """etils.epath keeps one fsspec filesystem per scheme for the process (lru_cache): a new emulator
    on a new port needs a new one (a real run never changes endpoint mid-process)."""
    from etils.epath import backend  # noqa: PLC0415

    backend.fsspec_backend._get_filesystem.cache_clear()


@contextlib.contextmanager
def _emulator(command, env_for_port):
    """Starts `command(port)` (a real storage server) on a free 127.0.0.1 port, waits until it
    accepts connections, sets env_for_port(port) in this process meanwhile and yields it."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = env_for_port(port)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # before the filesystem package is first imported (gcsfs reads its flag then)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture()
def s3_emulator():
    """A real S3 server (moto) on 127.0.0.1 with bucket `jaxgrow-test`; yields the env that points
    s3fs (and subprocesses) at it. The env is also set in this process for the test's duration."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    with _emulator(lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                   lambda port: {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                                 "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}) as env:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        _forget_filesystems()
        s3fs.S3FileSystem().mkdir("jaxgrow-test")
        yield env


@pytest.fixture()
def gcs_emulator():
    """A real GCS server (gcp-storage-emulator, in memory) on 127.0.0.1 with bucket `jaxgrow-test`;
    yields the env that points gcsfs and tensorstore (and subprocesses) at it, also set in this process meanwhile.
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs otherwise first probes the bucket type over gRPC
    with TLS, which the emulator does not speak (a minute of handshake retries per filesystem)."""
    import importlib.util

    if importlib.util.find_spec("gcsfs") is None or importlib.util.find_spec("gcp_storage_emulator") is None:
        pytest.skip("needs gcsfs and gcp-storage-emulator")
    with _emulator(lambda port: [sys.executable, str(REPO / "tests" / "gcs_emulator.py"), "start", "--host=127.0.0.1",
                                 f"--port={port}", "--in-memory", "--default-bucket=jaxgrow-test"],
                   lambda port: {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
                                 "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                                 # orbax writes gs:// checkpoints through tensorstore, which needs its own two
                                 # (for emulators only: a test token, the emulator's URL)
                                 "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{port}",
                                 "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x"}) as env:
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()
        _forget_filesystems()
        yield env


def _git_status() -> str | None:
    try:
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an sdist): nothing to compare


@pytest.fixture(scope="session", autouse=True)
def the_suite_leaves_the_checkout_clean():
    """Tests write only under their tmp dirs: the checkout's `git status` is the same after the suite as before
    (a test that writes into the repository fails the run at teardown, naming the paths)."""
    before = _git_status()
    yield
    after = _git_status()
    if before is not None and after is not None and after != before:
        new = sorted(set(after.splitlines()) - set(before.splitlines()))
        pytest.fail(f"the test suite changed the checkout: {new[:10]}", pytrace=False)
