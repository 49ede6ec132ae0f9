"""The training input pipeline: windows of the token stream, deterministic shuffles, mixtures, and
per-host slices of global batches (grain), prefetched to the devices.

grain: `WindowSource` is a RandomAccessDataSource (window i = tokens [i*S, i*S + S + 1), inputs and
shifted targets); each source is shuffled (MapDataset.shuffle, a lazy index permutation, reshuffled per
epoch) and repeated; a mixture is MapDataset.mix (a fixed, deterministic interleave by weight).
Element k of the training dataset is this process's slice of global batch k, so the iterator state is
the number of consumed global batches, the same under any process count, and tokens consumed per
mixture source follow from it exactly. The top of the data wing: depends on corpus and shards.

Reading: a batch's windows are fetched together (`WindowSource._getitems`, grain's batched-read protocol, which
its shuffle/repeat/mix datasets pass through): one `TokenStore.read_ranges` call, i.e. one concurrent set of exact
ranged GETs on a bucket, one pread per window locally. From a bucket DeviceIterator also reads REMOTE_READ_AHEAD
batches ahead in threads (grain's ReadOptions), so a request's latency overlaps the batches before it."""

from __future__ import annotations

import collections
from typing import Any, Iterator

import grain
import jax
import numpy as np

from jaxgrow.data import corpus
from jaxgrow.data.formats import DataError
from jaxgrow.model import sharding


# Batches read ahead (in threads) from a store with remote shards: with one batch in flight the loader idles for the
# slowest GET of each batch; a few keep the connection pool busy. Local shards are read on demand (0), as ever.
REMOTE_READ_AHEAD = 4

# ----------------------------------------------------------------------------------------------
# grain pipeline


class WindowSource(grain.sources.RandomAccessDataSource):
    """Random-access source: window i = stream[i*S : i*S + S + 1] (inputs and shifted targets)."""

    def __init__(self, stream, seq_len: int):
        self.stream, self.seq_len = stream, seq_len
        self.n = (len(stream) - 1) // seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        s = self.seq_len
        return np.asarray(self.stream[i * s: i * s + s + 1], np.int32)

    def _getitems(self, indices) -> list[np.ndarray]:
        """Windows `indices` in one read (grain's SupportsBatchedReadRandomAccessDataSource)."""
        read_ranges = getattr(self.stream, "read_ranges", None)
        if read_ranges is None:  # an in-memory token array
            return [self[i] for i in indices]
        s = self.seq_len
        return read_ranges([(i * s, i * s + s + 1) for i in indices])

    def __repr__(self) -> str:
        return f"WindowSource({self.n} windows of {self.seq_len}+1 tokens)"




def _as_sources(stream) -> list[corpus.MixSource]:
    if isinstance(stream, list) and stream and isinstance(stream[0], corpus.MixSource):
        return stream
    return [corpus.MixSource("", 1.0, stream)]


def mixed_windows(stream, seq_len: int, seed: int) -> grain.MapDataset:
    """Infinite MapDataset of windows: each source shuffled (reshuffled every epoch) and repeated;
    several sources interleaved by weight with grain's deterministic MapDataset.mix."""
    srcs = _as_sources(stream)
    parts = [grain.MapDataset.source(WindowSource(s.store, seq_len)).seed(seed + 7919 * i).shuffle().repeat(None)
             for i, s in enumerate(srcs)]
    if len(parts) == 1:
        return parts[0]
    return grain.MapDataset.mix(parts, [s.weight for s in srcs])


def _int_proportions(weights: list[float]) -> tuple[int, ...]:
    """grain's MapDataset.mix integer proportions (mix.py: scale the smallest weight to 100)."""
    scale = 100 / min(weights)
    return tuple(int(w * scale) for w in weights)


def rows_per_source(n_rows: int, weights: list[float]) -> list[int]:
    """How many of the first `n_rows` elements of MapDataset.mix(…, weights) come from each source:
    the closed form of grain's interleave (its element k comes from the source whose count
    increases between k and k+1)."""
    props = _int_proportions(weights)
    remaining, k, out = sum(props), n_rows, []
    for p in props:
        rest = (k * (remaining - p)) // remaining
        out.append(k - rest)
        k, remaining = rest, remaining - p
    return out


def train_dataset(stream, seq_len: int, global_batch: int, seed: int,
                  process_index: int = 0, process_count: int = 1, start: int = 0, rows: Any = None) -> grain.MapDataset:
    """Infinite MapDataset of this process's rows of each [global_batch, seq_len + 1] global batch.

    `stream`: a token array/TokenStore, or a list of MixSource. Element k is the process's rows of
    global batch `start + k`, so the k-th batch is the same data under any number of processes and
    the iterator state ({'next_index': k}) is topology independent. Only this process's windows are
    read. `rows` (sharding.process_rows) names the rows of each global batch this process supplies,
    as the batch sharding lays them out; by default the process_index-th block of
    global_batch / process_count rows.
    """
    if rows is None:
        if global_batch % process_count:
            raise DataError(f"data.batch_size={global_batch} must be divisible by the process count {process_count}")
        local = global_batch // process_count
        rows = range(process_index * local, (process_index + 1) * local)
    rows = [int(r) for r in rows]
    windows = mixed_windows(stream, seq_len, seed)

    def local_rows(k: int) -> np.ndarray:
        first = (start + k) * global_batch
        return np.stack(windows._getitems([first + r for r in rows]))

    # 2**62 batches: effectively infinite, and a finite length keeps grain's index arithmetic simple.
    dataset = grain.MapDataset.range(1 << 62).map(local_rows)
    # what DeviceIterator reads ahead unless told otherwise (an attribute: the dataset stays a plain MapDataset)
    dataset.read_ahead = REMOTE_READ_AHEAD if any(getattr(s.store, "remote", False) for s in _as_sources(stream)) else 0
    return dataset


def eval_batches(stream, seq_len: int, global_batch: int, max_batches: int,
                 process_index: int = 0, process_count: int = 1, rows: Any = None) -> list[np.ndarray]:
    """The fixed held-out batches: consecutive windows from the start of the eval stream (this
    process's `rows` of each, as in train_dataset)."""
    windows = WindowSource(stream, seq_len)
    n = min(max_batches, max(1, len(windows) // global_batch))
    if rows is None:
        local = global_batch // process_count
        rows = range(process_index * local, (process_index + 1) * local)
    return [np.stack(windows._getitems([(b * global_batch + int(r)) % len(windows) for r in rows])) for b in range(n)]


def device_eval_batches(stream, data_cfg: Any, mesh: jax.sharding.Mesh) -> list[jax.Array]:
    """The fixed held-out batches as global arrays split over `mesh`'s batch axes, each process supplying its own
    rows: the one builder of eval batches (training's held-out loss, the report's KL and acceptance, `evaluate`)."""
    batch_sharding = sharding.batch_sharding(mesh)
    host = eval_batches(stream, data_cfg.seq_len, data_cfg.batch_size, data_cfg.eval_batches,
                        rows=sharding.process_rows(batch_sharding, data_cfg.batch_size))
    return [jax.make_array_from_process_local_data(batch_sharding, b) for b in host]


class DeviceIterator:
    """Prefetches batches to devices as global jax.Arrays; `state()` counts *consumed* batches.

    workers=0: batches are read in this process and restored with grain's own iterator state
    ({'next_index': k}, host-count independent). workers>0: grain worker processes
    (IterDataset.mp_prefetch) read the windows; grain's state would then record per-worker
    positions, valid only for the same worker count, so a restore starts the MapDataset at the
    consumed global batch (dataset[k:]) instead, which gives the same batches for any worker count.
    `mixture` [(name, weight)] and `row_tokens` make `log_fields()` report tokens consumed per source.
    `read_ahead`: batches read ahead in threads (grain's ReadOptions; in each worker with workers>0), ordered, so
    data and state are the same for any value; by default the dataset's own (train_dataset: REMOTE_READ_AHEAD from
    a bucket, 0 locally).
    """

    def __init__(self, dataset: grain.MapDataset, sharding: jax.sharding.Sharding, prefetch: int = 2,
                 state: dict | None = None, *, workers: int = 0, mixture: list | None = None,
                 global_batch: int = 0, row_tokens: int = 0, read_ahead: int | None = None):
        self._consumed = int(state["next_index"]) if state else 0
        self.read_ahead = int(getattr(dataset, "read_ahead", 0) if read_ahead is None else read_ahead)
        read = grain.ReadOptions(num_threads=self.read_ahead, prefetch_buffer_size=self.read_ahead)
        if workers > 0:
            from absl import flags  # noqa: PLC0415

            if not flags.FLAGS.is_parsed():  # grain reads its absl flags; library use has no absl main
                flags.FLAGS.mark_as_parsed()
            self._it = iter(dataset[self._consumed:].to_iter_dataset(read).mp_prefetch(
                grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(1, prefetch))))
        else:
            self._it = dataset.to_iter_dataset(read).__iter__()
            if self._consumed:
                self._it.set_state({"next_index": self._consumed})
        self._sharding = sharding
        self._queue: collections.deque = collections.deque()
        self._prefetch = max(1, prefetch)
        self._mixture = [m for m in (mixture or []) if m[0]]
        self._global_batch, self._row_tokens = global_batch, row_tokens

    def _fill(self) -> None:
        while len(self._queue) < self._prefetch:
            local = next(self._it)
            self._queue.append(jax.make_array_from_process_local_data(self._sharding, local))

    def __iter__(self) -> Iterator[jax.Array]:
        return self

    def __next__(self) -> jax.Array:
        self._fill()
        self._consumed += 1
        return self._queue.popleft()

    def state(self) -> dict:
        return {"next_index": self._consumed}

    def close(self) -> None:
        """Stops reading ahead (grain's threads or worker processes); batches already read are dropped."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        self._queue.clear()

    def log_fields(self) -> dict:
        """{'tokens_<source>': tokens consumed from each mixture source so far} (empty without a mixture)."""
        if len(self._mixture) < 2:
            return {}
        rows = rows_per_source(self._consumed * self._global_batch, [w for _, w in self._mixture])
        return {f"tokens_{name}": n * self._row_tokens for (name, _), n in zip(self._mixture, rows)}
