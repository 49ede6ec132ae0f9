"""TokenStore: the lazy reader of one or more tokenized directories (data/shards.py writes them): the concatenated
token ids, read only where asked, never the whole corpus.

Local shards are read with os.pread (no memory map: resident memory stays at the windows being read, and no lock);
shards in a bucket with one fsspec `cat_ranges` call per batch over exactly the windows' bytes (concurrent ranged
GETs, no read-ahead blocks, no per-shard file object or lock). Depends on formats and storage only.
"""

from __future__ import annotations

import os
import threading

import numpy as np
from etils import epath

from jaxgrow import storage
from jaxgrow.data.formats import DataError


# Concurrent connections the reader keeps to an S3-compatible store, per process: botocore's default pool is 10,
# which at 50 ms a request caps a host at 200 windows/s (0.8M tokens/s at seq_len 4096), whatever the read-ahead.
REMOTE_CONNECTIONS = 64


def _reader_options(scheme: str) -> dict:
    """fsspec storage options of the filesystem TokenStore reads `scheme` shards with."""
    return {"config_kwargs": {"max_pool_connections": REMOTE_CONNECTIONS}} if scheme == "s3" else {}


class TokenStore:
    """The concatenated token ids of one or more tokenized directories, read lazily.

    `len(store)` tokens; `store[a:b]` -> int32 array; `store.read_ranges([(a, b), ...])` -> one int32 array per
    range, which is how training reads a batch of windows. Local shards: one os.pread per piece (no memory map, so
    resident memory stays at the windows being read; no lock, no shared file position). Remote shards: one fsspec
    `cat_ranges` call for all the pieces of a batch, i.e. one ranged GET per piece for exactly its bytes, all in flight
    at once on fsspec's event loop (a file object would fetch a read-ahead block of megabytes for each 8 KB window,
    serialised behind the one position per shard). A piece is the part of a range inside one shard: a window that
    straddles two shards is two. Descriptors and filesystems open on first use, per process (the store pickles
    without them, for grain worker processes; a forked child opens its own filesystem, bound to its event loop).
    """

    def __init__(self, parts: list[tuple[epath.Path, dict]]):
        self.parts = [(epath.Path(str(d)), m) for d, m in parts]
        self.shards: list[tuple[str, np.dtype]] = []
        counts = []
        for directory, manifest in self.parts:
            dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
            for s in manifest["shards"]:
                self.shards.append((str(directory / "shards" / s["name"]), dtype))
                counts.append(s["tokens"])
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._schemes = [storage.scheme(path) for path, _ in self.shards]
        self.remote = any(self._schemes)  # whether any shard is on an object store
        self._fds: dict[int, int] = {}
        self._filesystems: dict = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __getstate__(self):
        return {"parts": [(str(d), m) for d, m in self.parts]}

    def __setstate__(self, state):
        self.__init__(state["parts"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _pieces(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(shard, first token within the shard, tokens) covering tokens [start, stop) of the stream."""
        out = []
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self.offsets[shard + 1]))
            out.append((shard, start - int(self.offsets[shard]), end - start))
            start, shard = end, shard + 1
        return out

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = self._fds[shard] = os.open(self.shards[shard][0], os.O_RDONLY)
        return fd

    def _filesystem(self, scheme: str):
        import fsspec  # noqa: PLC0415

        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's filesystem is bound to the parent's event loop
                self._filesystems, self._pid = {}, os.getpid()
            fs = self._filesystems.get(scheme)
            if fs is None:
                fs = self._filesystems[scheme] = fsspec.filesystem(scheme, **_reader_options(scheme))
        return fs

    def read_ranges(self, ranges) -> list[np.ndarray]:
        """Tokens [a, b) of the stream for each (a, b) in `ranges`, as int32 arrays; remote pieces of all ranges
        are fetched together (one cat_ranges call per URL scheme)."""
        pieces = [self._pieces(int(a), int(b)) for a, b in ranges]
        flat = [p for ps in pieces for p in ps]
        data: list = [None] * len(flat)
        remote: dict[str, list[int]] = {}
        for j, (shard, first, count) in enumerate(flat):
            itemsize = self.shards[shard][1].itemsize
            if self._schemes[shard]:
                remote.setdefault(self._schemes[shard], []).append(j)
            else:
                data[j] = os.pread(self._fd(shard), count * itemsize, first * itemsize)
        for scheme, js in remote.items():
            paths, starts, ends = [], [], []
            for j in js:
                shard, first, count = flat[j]
                itemsize = self.shards[shard][1].itemsize
                paths.append(self.shards[shard][0])
                starts.append(first * itemsize)
                ends.append((first + count) * itemsize)
            for j, got in zip(js, self._filesystem(scheme).cat_ranges(paths, starts, ends, on_error="return")):
                if isinstance(got, BaseException):
                    raise got
                data[j] = got
        out, j = [], 0
        for ps in pieces:
            arrays = []
            for shard, first, count in ps:
                path, dtype = self.shards[shard]
                if len(data[j]) != count * dtype.itemsize:
                    raise DataError(f"{path} is shorter than its manifest says ({len(data[j])} of "
                                    f"{count * dtype.itemsize} bytes at {first * dtype.itemsize}); re-run tokenize")
                arrays.append(np.frombuffer(data[j], dtype).astype(np.int32))
                j += 1
            out.append(arrays[0] if len(arrays) == 1 else np.concatenate(arrays) if arrays else np.zeros(0, np.int32))
        return out

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TokenStore supports contiguous slices only")
        start, stop, _ = key.indices(len(self))
        return self.read_ranges([(start, max(start, stop))])[0]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds, self._filesystems = {}, {}
