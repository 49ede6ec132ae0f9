"""Paths for local and object-store storage through `etils.epath` (what orbax uses), and atomic writes.

`as_path("gs://bucket/run")` returns an epath.Path backed by fsspec (gcsfs); a local path comes back
absolute (orbax refuses relative ones). A scheme etils does not know, or a known scheme whose fsspec
package is not installed, is an InputError naming the field, raised before anything is written.

Atomic writes: locally a temporary sibling is renamed over the target (rename is atomic on POSIX);
on an object store an object becomes visible only when its upload completes (a single PUT or a
completed multi-part upload), so writing the object directly is already all-or-nothing.

Directories on an object store are only key prefixes: `upload_tree`/`download_tree` copy a local
directory to a prefix and back (orbax checkpoints of a remote workdir are staged locally, see
checkpoint.py), and `local_output` lets writers that need a real file (matplotlib, tensorboardX)
write locally and upload once they are done.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

from etils import epath

from jaxgrow.config import InputError


# scheme -> the fsspec implementation etils' fsspec backend needs (the `.[gcs]` / `.[s3]` extras)
SCHEME_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(InputError):
    """A path that cannot be used: unknown scheme, missing filesystem package."""


def scheme(path: str | os.PathLike) -> str:
    """'' for a local path, else the URL scheme ('gs', 's3', ...)."""
    m = _SCHEME.match(str(path))
    return m.group(1).lower() if m else ""


def is_remote(path: str | os.PathLike) -> bool:
    return scheme(path) != ""


def check_scheme(path: str | os.PathLike, field: str) -> None:
    """Raises StorageError unless `path` is local or a known scheme whose package is importable."""
    s = scheme(path)
    if not s:
        return
    if not str(path).startswith(s):  # etils/fsspec know schemes in lower case only
        raise StorageError(f"{field}={path}: write the URL scheme in lower case ({s}://...)")
    if s not in SCHEME_PACKAGES:
        raise StorageError(f"{field}={path}: unknown URL scheme {s + '://'!r}; valid: a local path or "
                           + ", ".join(f"{k}://" for k in SCHEME_PACKAGES))
    package = SCHEME_PACKAGES[s]
    if importlib.util.find_spec(package) is None:
        extra = {"gs": "gcs", "s3": "s3", "az": "az"}.get(s)  # the extras pyproject.toml declares
        raise StorageError(f"{field}={path}: {s}:// needs the {package} package; pip install {package}"
                           + (f" (or jaxgrow[{extra}])" if extra else ""))


def as_path(path: str | os.PathLike, field: str = "path") -> epath.Path:
    """A checked epath.Path: local paths are made absolute (user home expanded). An empty or blank path is bad
    input (Path('') would silently be the current directory)."""
    text = os.fspath(path) if not isinstance(path, epath.Path) else str(path)
    if not text.strip():
        raise StorageError(f"{field}={text!r} is empty; give a directory path (local, gs://... or s3://...)")
    if text != text.strip():
        raise StorageError(f"{field}={text!r} has leading or trailing whitespace; give the path without it")
    check_scheme(text, field)
    if is_remote(text):
        return epath.Path(text)
    return epath.Path(Path(text).expanduser().absolute())


def local_path(path: epath.Path | str) -> Path | None:
    """The pathlib.Path of a local path, None for a remote one."""
    return None if is_remote(path) else Path(str(path))


@contextlib.contextmanager
def atomic_open(path: epath.Path | str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens `path` for writing so that readers see either nothing or the whole file.

    Local: write `<name>.tmp-<uuid>` beside it, fsync, rename. Remote: the object store commits the
    object when the upload completes; an exception aborts the upload (fsspec discards the buffer).
    """
    assert mode in ("wb", "w"), mode
    if is_remote(path):
        f = epath.Path(str(path)).open(mode)
        try:
            yield f
        except BaseException:
            raw = getattr(f, "buffer", f)  # text mode wraps the fsspec file
            if hasattr(raw, "discard"):
                raw.discard()  # abort the upload: the object never appears
            else:
                f.close()
            raise
        f.close()
        return
    p = Path(os.fspath(path))
    tmp = p.with_name(f"{p.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path, data: bytes) -> None:
    """Writes `data` to `path` (local or remote) all-or-nothing."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, data: str) -> None:
    """Writes UTF-8 `data` to `path` (local or remote) all-or-nothing."""
    atomic_write_bytes(path, data.encode("utf-8"))


def glob(pattern: str, field: str) -> list[epath.Path]:
    """Sorted matches of a glob, local or remote (`gs://bucket/dir/*.jsonl.gz`)."""
    check_scheme(pattern, field)
    if not is_remote(pattern):
        import glob as globlib  # noqa: PLC0415

        return [epath.Path(Path(m).absolute()) for m in sorted(globlib.glob(os.path.expanduser(pattern), recursive=True))]
    import fsspec  # noqa: PLC0415

    fs, _, _ = fsspec.get_fs_token_paths(pattern)
    prefix = scheme(pattern) + "://"
    matches = fs.glob(pattern) if any(c in pattern for c in "*?[") else ([pattern] if fs.exists(pattern) else [])
    return [epath.Path(m if m.startswith(prefix) else prefix + m) for m in sorted(matches)]


def join(base: epath.Path | str | os.PathLike, *parts: str) -> epath.Path:
    """`base / part / ...` as an epath.Path (pathlib.Path(base, ...) would turn gs:// into gs:/)."""
    return epath.Path(str(base)).joinpath(*parts) if is_remote(base) else epath.Path(os.fspath(base)).joinpath(*parts)


def copy_file(src: epath.Path | str | os.PathLike, dst: epath.Path | str | os.PathLike) -> int:
    """Streams one file between any two locations (local or remote); dst appears all-or-nothing.
    Returns the number of bytes copied."""
    with epath.Path(str(src)).open("rb") as r, atomic_open(dst, "wb") as w:
        shutil.copyfileobj(r, w, 16 << 20)
        return w.tell()


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def upload_tree(local_dir: str | os.PathLike, remote_dir: epath.Path | str) -> dict[str, int]:
    """Copies every file under `local_dir` to the same relative key under `remote_dir` (in parallel:
    an object store is latency-bound). Returns {relative path: size in bytes}."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    root = Path(local_dir)
    files = _files_under(root)
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda rel: copy_file(root / rel, join(remote_dir, rel)), files))
    return dict(zip(files, sizes))


def download_tree(remote_dir: epath.Path | str, files: dict[str, int], local_dir: str | os.PathLike) -> None:
    """Copies the listed files (relative path -> expected size) from `remote_dir` into `local_dir`;
    a missing or short file raises FileNotFoundError / OSError naming it."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    root = Path(local_dir)

    def one(rel: str) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        size = copy_file(join(remote_dir, rel), root / rel)
        if size != files[rel]:
            raise FileNotFoundError(f"{join(remote_dir, rel)}: {size} bytes, expected {files[rel]} (truncated)")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, sorted(files)))


def remove_tree(path: epath.Path | str) -> None:
    """Deletes a directory (local) or every object under a prefix (remote); missing is fine."""
    p = epath.Path(str(path))
    if p.exists():
        p.rmtree()


# ----------------------------------------------------------------------------------------------
# Local scratch: <tmp>/jaxgrow-<kind>-<id>/ directories, each with an `owner` file (host, pid). A SIGKILL leaves them
# behind; `sweep_scratch` (called when a run starts) removes those whose owner process on this host is dead, so temp
# work never leaks, and a keyed directory is adopted by the rerun that asks for the same key (it resumes it).

SCRATCH_PREFIX = "jaxgrow-"


def _owner_alive(directory: Path) -> bool:
    try:
        owner = json.loads((directory / "owner").read_text())
    except (OSError, ValueError):
        # no owner yet (another process between its mkdir and its owner file) or a torn one (a crash right there):
        # young, it may be in use; old, nobody is using it
        try:
            return time.time() - directory.stat().st_mtime < 60
        except OSError:
            return False
    if owner.get("host") != socket.gethostname():
        return True  # another machine's (a shared /tmp): not ours to judge
    return local_process_alive(owner.get("pid"))


def local_process_alive(pid: Any) -> bool:
    """Whether this host has a process `pid` (one we may not signal, or an unreadable pid, counts as alive: a
    holder is only ever taken over when it is surely gone)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def _claim(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "owner", json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    return directory


def scratch_dir(kind: str, key: str | None = None) -> Path:
    """A local scratch directory owned by this process. With `key`, the same key names the same directory, which a
    rerun adopts when its previous owner is dead (a fresh one if a live process holds it); without, a new one."""
    root = Path(tempfile.gettempdir())
    if key is not None:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        directory = root / f"{SCRATCH_PREFIX}{kind}-{digest}"
        if not directory.exists() or not _owner_alive(directory) or \
                json.loads((directory / "owner").read_text()).get("pid") == os.getpid():
            return _claim(directory)
    return _claim(Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{kind}-", dir=root)))


def sweep_scratch(*kinds: str) -> None:
    """Removes the scratch directories of `kinds` whose owner process is dead."""
    root = Path(tempfile.gettempdir())
    for kind in kinds:
        for d in root.glob(f"{SCRATCH_PREFIX}{kind}-*"):
            if d.is_dir() and not _owner_alive(d):
                shutil.rmtree(d, ignore_errors=True)


def release_scratch(directory: Path | str) -> None:
    shutil.rmtree(str(directory), ignore_errors=True)


@contextlib.contextmanager
def local_output(path: epath.Path | str | os.PathLike) -> Iterator[Path]:
    """A local file path to write `path` through: the path itself when local (unchanged behaviour),
    else a temporary file uploaded to `path` when the block succeeds (nothing uploaded on error)."""
    if not is_remote(path):
        yield Path(os.fspath(path))
        return
    tmp_dir = scratch_dir("upload")
    try:
        tmp = Path(tmp_dir, epath.Path(str(path)).name)
        yield tmp
        copy_file(tmp, path)
    finally:
        release_scratch(tmp_dir)


def list_files(root: epath.Path | str) -> list[str]:
    """Relative paths of every file under a directory or prefix (local or remote), sorted."""
    if not is_remote(root):
        return _files_under(Path(os.fspath(root)))
    import fsspec  # noqa: PLC0415

    fs, _, (base,) = fsspec.get_fs_token_paths(str(root))
    base = base.rstrip("/")
    return sorted(f[len(base) + 1:] for f in fs.find(base))


def file_sizes(directory: epath.Path | str) -> dict[str, int]:
    """{file name: size in bytes} of the files directly in a directory or prefix, in one listing ({} if absent)."""
    if not is_remote(directory):
        d = Path(os.fspath(directory))
        return {e.name: e.stat().st_size for e in os.scandir(d) if e.is_file()} if d.is_dir() else {}
    import fsspec  # noqa: PLC0415

    fs, _, (base,) = fsspec.get_fs_token_paths(str(directory))
    try:
        entries = fs.ls(base.rstrip("/"), detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries if e.get("type") == "file"}


def check_bucket(path: epath.Path | str, field: str) -> None:
    """Raises StorageError unless the bucket of remote `path` exists and can be listed (writes
    nothing): a typo in the bucket name fails before a run starts, not at its first checkpoint."""
    import fsspec  # noqa: PLC0415

    text = str(path)
    check_scheme(text, field)
    bucket = text.split("://", 1)[1].split("/", 1)[0]
    try:
        fs, _, _ = fsspec.get_fs_token_paths(text)
        found = fs.exists(bucket)
    except Exception as e:  # credentials, endpoint, network: all mean the run cannot write there
        raise StorageError(f"{field}={text}: cannot reach bucket {bucket!r} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if not found:
        raise StorageError(f"{field}={text}: bucket {bucket!r} does not exist (create it first)")


def _canonical(path: epath.Path | str) -> str:
    """A path as one comparable string: local paths resolved (symlinks, '..'), remote ones normalised."""
    text = str(path)
    if is_remote(text):
        return text.rstrip("/") + "/"
    return os.path.realpath(os.path.abspath(os.path.expanduser(text))).rstrip("/") + "/"


def overlaps(a: epath.Path | str, b: epath.Path | str) -> bool:
    """Whether `a` and `b` are the same place or one holds the other."""
    ca, cb = _canonical(a), _canonical(b)
    return ca.startswith(cb) or cb.startswith(ca)


def check_apart(out: epath.Path | str, other: epath.Path | str, field: str, what: str) -> None:
    """An output path must neither be, nor be inside, nor contain `other` (a workdir or an input): writing it would
    overwrite or mix with what it reads. InputError naming the flag otherwise."""
    from jaxgrow.config import InputError  # noqa: PLC0415

    if overlaps(out, other):
        raise InputError(f"{field}={out} is, is inside or contains {what} {other}; give an output directory apart "
                         "from it (writing there would overwrite or mix with what it reads)")


def check_writable(path: epath.Path | str, field: str) -> None:
    """Raises StorageError unless `path` is a directory (or a place for one) this process can write: locally the
    nearest existing ancestor must be a writable directory (a read-only mount, a file in the way); remotely the bucket
    must exist and accept a probe object, written and deleted again (wrong credentials fail here, not at the first
    checkpoint). Leaves nothing behind."""
    if is_remote(path):
        check_bucket(path, field)
        probe = join(path, f".jaxgrow-write-probe-{uuid.uuid4().hex[:12]}")
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except Exception as e:  # noqa: BLE001  (credentials, permissions, endpoint: the run could not write there)
            raise StorageError(f"{field}={path}: cannot write there ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else ''}); check the credentials") from None
        return
    p = Path(os.fspath(path))
    if p.exists() and not p.is_dir():
        raise StorageError(f"{field}={p} exists and is not a directory")
    probe_dir = p
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir() or not os.access(probe_dir, os.W_OK | os.X_OK):
        raise StorageError(f"{field}={p} is not writable ({probe_dir} is not a writable directory); choose a "
                           "directory you can write to")


def refresh(path: epath.Path | str) -> None:
    """Drops fsspec's cached listings and object details under a remote prefix, so what another
    process (or a person) changed since is seen: s3fs would otherwise read with a stale ETag."""
    if not is_remote(path):
        return
    import fsspec  # noqa: PLC0415

    fs, _, (p,) = fsspec.get_fs_token_paths(str(path))
    p = p.rstrip("/")
    for key in [k for k in list(fs.dircache) if k.startswith(p + "/")]:  # invalidate_cache(p) keeps children
        fs.dircache.pop(key, None)
    fs.invalidate_cache(p)  # p and its parents


def parse_jsonl(data: bytes, source: str = "") -> tuple[list[dict], int]:
    """(records, skipped) of JSON-lines bytes. A torn final record (what a kill or a full disk leaves mid-write:
    no trailing newline, or unparsable) is skipped and counted, never fatal; so is an unparsable record elsewhere
    (a reader of an append-only log must always get through it)."""
    lines = data.split(b"\n")
    records, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (ValueError, UnicodeDecodeError):
            skipped += 1
    return records, skipped


METRICS_FILE, METRICS_PARTS = "metrics.jsonl", "metrics"  # a local workdir appends; a remote one writes parts


def read_metrics(workdir: epath.Path | str) -> tuple[list[dict], int]:
    """(records, skipped torn ones) of a workdir's metrics as one stream: metrics.jsonl, then the parts
    metrics/NNNNN.jsonl of a remote workdir in order (train/logs.py MetricsLog writes them)."""
    records, skipped = read_jsonl(join(workdir, METRICS_FILE))
    parts_dir = join(workdir, METRICS_PARTS)
    names = sorted(p for p in list_files(parts_dir) if p.endswith(".jsonl")) if parts_dir.exists() else []
    for name in names:
        more, bad = read_jsonl(join(parts_dir, name))
        records += more
        skipped += bad
    return records, skipped


def read_jsonl(path: epath.Path | str) -> tuple[list[dict], int]:
    """parse_jsonl of a local or remote file ([], 0 when it does not exist)."""
    p = epath.Path(str(path))
    if not p.exists():
        return [], 0
    return parse_jsonl(p.read_bytes(), str(p))


# ----------------------------------------------------------------------------------------------
# Fault injection for the reliability tests (train/faults.py documents the points): die, or get SIGTERM/SIGINT, the
# n-th time this process reaches a named point. Lives here, at the bottom, so every wing can mark its points.

_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """JAXGROW_FAULT="<point>:<n>[:TERM|:INT]": the n-th time this process reaches <point>, it sends itself
    SIGKILL (default), SIGTERM or SIGINT. Unset in normal runs: then this is one environment lookup."""
    spec = os.environ.get("JAXGROW_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(parts[1]):
        import signal  # noqa: PLC0415

        os.kill(os.getpid(), {"TERM": signal.SIGTERM, "INT": signal.SIGINT}.get(parts[2] if len(parts) > 2 else "",
                                                                                signal.SIGKILL))
