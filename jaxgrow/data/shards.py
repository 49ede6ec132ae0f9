"""Token shards: the writer (one unit of work per input file, streamed, in worker processes), the
manifest, and `TokenStore`, the lazy reader of a tokenized directory.

A tokenized directory (written by `jaxgrow tokenize`, or by the raw-text cache of a run):
    tokenizer.json                the tokenizer the ids come from
    shards/UUUUU-PPPP.bin         raw little-endian uint16 (vocab <= 65536) or uint32 token ids:
                                  documents back to back, each followed by EOS (and preceded by BOS
                                  when one is configured); input file U, part P (parts of
                                  --shard_tokens tokens)
    units/UUUUU.json              one record per finished input file (resume skips these)
    manifest.json                 written last: dtype, tokenizer sha256, eos/bos ids, sources with
                                  fingerprints, shards with token counts

Why flat binary shards instead of ArrayRecord: every training read is "tokens [a, b) of the
concatenated corpus" for arbitrary window offsets, which on fixed-width ids is one pread locally and
one ranged GET remotely, with no per-record index or framing; the window length (seq_len) is not
baked into the files, so one tokenized corpus serves every seq_len and packing.

Determinism: each input file is one unit of work whose shards depend only on that file and the
tokenizer, and the manifest lists units in sorted-input order, so the bytes are identical for any
--workers. Workers are spawned processes (tokenizers' Rust pool is not fork-safe). Depends on
tokenizers and formats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import queue as queue_lib
import sys

import numpy as np
from etils import epath

from jaxgrow import storage
from jaxgrow.config import InputError
from jaxgrow.data import formats, tokenizers as tokenizers_lib
from jaxgrow.data.formats import DataError


log = logging.getLogger("jaxgrow")

FORMAT = "jaxgrow.tokens/1"
# text encoded per encode_batch call (characters): with pieces of at most formats.PIECE_CHARS (a longer document is
# tokenized in pieces), a worker holds at most BATCH_TEXT_BYTES + PIECE_CHARS of text and its encodings (~400 MB RSS)
BATCH_TEXT_BYTES = 4 << 20
DEFAULT_SHARD_TOKENS = 1 << 26


# ----------------------------------------------------------------------------------------------
# Tokenizing one unit (one input file)


@dataclasses.dataclass(frozen=True)
class UnitJob:
    index: int
    source: str
    fingerprint: dict
    out: str
    text_field: str
    field: str
    dtype: str
    eos_id: int
    bos_id: int
    shard_tokens: int
    tokenizer_sha256: str

    def pins(self) -> dict:
        """Every input that shapes this unit's bytes: a unit is done only when its record pins all of them (a
        resume with another tokenizer, EOS/BOS, dtype, text field or shard size redoes it)."""
        return {"source": self.fingerprint, "tokenizer_sha256": self.tokenizer_sha256, "dtype": self.dtype,
                "eos_id": self.eos_id, "bos_id": self.bos_id, "text_field": self.text_field,
                "shard_tokens": self.shard_tokens}


_WORKER: dict = {}


def _init_worker(tokenizer_json: str, progress, rayon_threads: int | None = None) -> None:
    if rayon_threads:  # a spawned worker: a terminal's Ctrl-C reaches it too; the parent stops it and says so
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # each worker process gets its share of the cores for tokenizers' Rust (rayon) pool, built on
        # first use: with one pool of all cores per worker the pools oversubscribe the machine, and
        # `tokenize --workers 2` on 2 cores ran at 5.5 MB/s instead of 8.0 (experiments/bench_data.py)
        os.environ.setdefault("RAYON_NUM_THREADS", str(rayon_threads))
    from tokenizers import Tokenizer  # noqa: PLC0415

    _WORKER["tok"] = Tokenizer.from_str(tokenizer_json)
    _WORKER["progress"] = progress


def unit_name(index: int) -> str:
    return f"{index:05d}.json"


class _ShardWriter:
    """Appends ids to shards/<unit>-<part>.bin, starting a new part every `shard_tokens` tokens.
    Each part is written through storage.atomic_open: it appears complete or not at all."""

    def __init__(self, out: epath.Path, unit: int, dtype: str, shard_tokens: int):
        self.out, self.unit, self.shard_tokens = out, unit, shard_tokens
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.shards: list[dict] = []
        self._ctx = None
        self._file = None

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype, copy=False)
        while len(ids):
            if self._file is None:
                name = f"{self.unit:05d}-{len(self.shards):04d}.bin"
                self.shards.append({"name": name, "tokens": 0})
                self._ctx = storage.atomic_open(self.out / "shards" / name, "wb")
                self._file = self._ctx.__enter__()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            chunk, ids = ids[:room], ids[room:]
            self._file.write(chunk.tobytes())
            self.shards[-1]["tokens"] += len(chunk)
            if self.shards[-1]["tokens"] >= self.shard_tokens:
                self.close()

    def close(self, exc: BaseException | None = None) -> None:
        if self._file is not None:
            ctx, self._ctx, self._file = self._ctx, None, None
            if exc is None:
                ctx.__exit__(None, None, None)
            else:
                ctx.__exit__(type(exc), exc, exc.__traceback__)


def _tokenize_unit(job: UnitJob) -> dict:
    """Tokenizes one input file into shards/<unit>-<part>.bin; writes units/<unit>.json last."""
    tok, progress = _WORKER["tok"], _WORKER.get("progress")
    out = epath.Path(job.out)
    writer = _ShardWriter(out, job.index, job.dtype, job.shard_tokens)
    documents, doc_start = 0, True

    def flush(batch: list[tuple[str, bool]]) -> None:
        nonlocal documents, doc_start
        encs = tok.encode_batch_fast([t for t, _ in batch], add_special_tokens=False)
        parts = []
        for (_, ends), enc in zip(batch, encs):
            if doc_start and job.bos_id >= 0:
                parts.append(np.asarray([job.bos_id], np.int64))
            parts.append(np.asarray(enc.ids, np.int64))
            doc_start = ends
            if ends:
                parts.append(np.asarray([job.eos_id], np.int64))
                documents += 1
        ids = np.concatenate(parts)
        writer.write(ids)
        if progress is not None:
            progress.put((len(ids), sum(len(t) for t, _ in batch)))

    try:
        batch, size = [], 0
        for piece in formats.iter_documents(epath.Path(job.source), job.text_field, job.field):
            batch.append(piece)
            size += len(piece[0])
            if size >= BATCH_TEXT_BYTES:
                flush(batch)
                batch, size = [], 0
        if batch:
            flush(batch)
    except BaseException as e:
        writer.close(e)
        raise
    writer.close()
    storage.fault_point("tokenize_unit")  # the unit's shards are written, its record not yet
    record = {"index": job.index, "pins": job.pins(), "documents": documents, "shards": writer.shards}
    storage.atomic_write_text(out / "units" / unit_name(job.index), json.dumps(record, sort_keys=True))
    return record


# ----------------------------------------------------------------------------------------------
# The manifest and the whole directory


MANIFEST_KEYS = ("format", "dtype", "tokenizer_sha256", "eos_id", "total_tokens", "shards", "sources")


def read_manifest(directory: str | epath.Path, field: str = "data") -> dict | None:
    """The manifest of a tokenized directory (None when there is none), checked to be one: valid JSON holding
    every key readers use, shards with a name and a token count; DataError naming the file otherwise."""
    p = epath.Path(str(directory)) / "manifest.json"
    if not p.exists():
        return None
    try:
        manifest = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{field}: {p} is not valid JSON ({type(e).__name__}); re-run tokenize into a new directory "
                        "or remove the damaged manifest.json to resume it") from None
    missing = [k for k in MANIFEST_KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise DataError(f"{field}: {p} lacks {missing}; not a jaxgrow tokenized directory (re-run tokenize)")
    if manifest["dtype"] not in ("uint16", "uint32") or not all(
            isinstance(sh, dict) and isinstance(sh.get("name"), str) and isinstance(sh.get("tokens"), int)
            for sh in manifest["shards"]):
        raise DataError(f"{field}: {p} has a bad dtype {manifest['dtype']!r} or shard list; re-run tokenize")
    return manifest


def check_shard_sizes(directory: epath.Path, manifest: dict, field: str, vocab_size: int = 0) -> None:
    """Every shard the manifest lists exists with exactly tokens x itemsize bytes (a truncated shard, or a manifest
    whose dtype was edited, would otherwise surface mid-training as a short read or a misleading non-finite loss).
    One directory listing, not a request per shard. With `vocab_size` (model.vocab_size), the shards' token ids are
    then checked to be below it (check_token_ids)."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    sizes = storage.file_sizes(storage.join(directory, "shards"))
    for sh in manifest["shards"]:
        want = sh["tokens"] * itemsize
        got = sizes.get(sh["name"])
        if got != want:
            what = "is missing" if got is None else f"has {got} bytes"
            raise DataError(f"{field}: {storage.join(directory, 'shards', sh['name'])} {what}, the manifest says "
                            f"{sh['tokens']} {manifest['dtype']} tokens = {want} bytes; re-run tokenize")
    if vocab_size:
        check_token_ids(directory, manifest, vocab_size, field)


# A run checks a tokenized directory's ids against model.vocab_size when it opens it (an id >= the vocab would
# otherwise surface as a non-finite loss at step 1, naming no file). Up to ID_SCAN_TOKENS tokens in all, every id is
# read; a larger directory is sampled deterministically: each shard gets an equal share of ID_SCAN_TOKENS (whole if it
# fits), read as evenly spaced blocks of ID_SAMPLE_TOKENS from its first token to its last, so the check reads about
# max(ID_SCAN_TOKENS, shards x ID_SAMPLE_TOKENS) tokens (512 MB of uint16) whatever the corpus size, and can miss
# bad ids only in a large directory's unread parts.
ID_SCAN_TOKENS = 1 << 28
ID_SAMPLE_TOKENS = 1 << 16
_ID_READ_TOKENS = 1 << 21     # tokens per read of a full scan
_ID_BATCH_BYTES = 64 << 20    # bytes in flight per remote cat_ranges call


def _id_ranges(tokens: int, share: int | None) -> list[tuple[int, int]]:
    """(first token, count) of the parts of one shard to check: all of it, or its evenly spaced sample blocks."""
    if share is None or tokens <= share:
        return [(a, min(_ID_READ_TOKENS, tokens - a)) for a in range(0, tokens, _ID_READ_TOKENS)]
    starts = np.linspace(0, tokens - ID_SAMPLE_TOKENS, max(1, share // ID_SAMPLE_TOKENS)).astype(np.int64)
    return [(int(a), ID_SAMPLE_TOKENS) for a in dict.fromkeys(starts.tolist())]


def check_token_ids(directory: epath.Path, manifest: dict, vocab_size: int, field: str) -> None:
    """Every shard's largest token id is < vocab_size (all ids up to ID_SCAN_TOKENS, a deterministic sample of a
    larger directory, see above); DataError naming the first bad shard, its id and the vocab otherwise. Local shards
    are read with os.pread, a bucket's with fsspec cat_ranges (exactly the checked bytes, concurrently)."""
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    if vocab_size > np.iinfo(dtype).max:
        return  # every id the dtype can hold is in range
    listed = [sh for sh in manifest["shards"] if sh["tokens"] > 0]
    total = sum(sh["tokens"] for sh in listed)
    share = None if total <= ID_SCAN_TOKENS else max(ID_SAMPLE_TOKENS, ID_SCAN_TOKENS // len(listed))
    item = dtype.itemsize
    paths = [str(storage.join(directory, "shards", sh["name"])) for sh in listed]
    plan = [[(a * item, (a + n) * item) for a, n in _id_ranges(sh["tokens"], share)] for sh in listed]
    tops = [-1] * len(listed)

    def seen(i: int, data: bytes) -> None:
        if len(data) >= item:
            tops[i] = max(tops[i], int(np.frombuffer(data, dtype, len(data) // item).max()))

    if storage.is_remote(directory):
        import fsspec  # noqa: PLC0415

        fs = fsspec.filesystem(storage.scheme(directory))
        batch, size = [], 0
        for r in [*((i, a, b) for i, ranges in enumerate(plan) for a, b in ranges), None]:
            if batch and (r is None or size >= _ID_BATCH_BYTES):
                got = fs.cat_ranges([paths[i] for i, _, _ in batch], [s for _, s, _ in batch], [e for *_, e in batch],
                                    on_error="raise")
                for (i, _, _), data in zip(batch, got):
                    seen(i, data)
                batch, size = [], 0
            if r is not None:
                batch.append(r)
                size += r[2] - r[1]
    else:
        for i, path in enumerate(paths):
            fd = os.open(path, os.O_RDONLY)
            try:
                for start, end in plan[i]:
                    seen(i, os.pread(fd, end - start, start))
            finally:
                os.close(fd)
    for path, top in zip(paths, tops):
        if top >= vocab_size:
            raise DataError(f"{field}: {path} holds token id {top} >= model.vocab_size={vocab_size}; it was tokenized "
                            "with another tokenizer (or is damaged): re-tokenize the inputs with the run's tokenizer")


def is_tokenized_dir(path: str) -> bool:
    try:
        p = storage.as_path(path)
        return p.is_dir() and (p / "manifest.json").exists()
    except InputError:
        return False


def check_manifest(directory: epath.Path, manifest: dict, info: tokenizers_lib.TokenizerInfo, field: str) -> None:
    if manifest.get("format") != FORMAT:
        raise DataError(f"{field}: {directory}/manifest.json has format {manifest.get('format')!r}, "
                        f"not {FORMAT!r}; re-run tokenize")
    if manifest["tokenizer_sha256"] != info.sha256:
        raise DataError(f"{field}: {directory} was tokenized with another tokenizer (sha256 "
                        f"{manifest['tokenizer_sha256'][:12]}, run uses {info.sha256[:12]}); re-tokenize it or "
                        "set data.tokenizer to its tokenizer.json")
    if manifest["eos_id"] != info.eos_id or manifest.get("bos_id", -1) != info.bos_id:
        raise DataError(f"{field}: {directory} has eos/bos ids {manifest['eos_id']}/{manifest.get('bos_id', -1)}, "
                        f"the run uses {info.eos_id}/{info.bos_id} (data.eos_token / data.bos_token)")



def _done_record(out: epath.Path, job: UnitJob) -> dict | None:
    """The unit's record if it is done for exactly this job (every pin equal, every shard whole), else None."""
    p = out / "units" / unit_name(job.index)
    if not p.exists():
        return None
    try:
        record = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError):
        return None  # torn: redo the unit
    if not isinstance(record, dict) or record.get("pins") != job.pins():
        return None
    itemsize = np.dtype(job.dtype).itemsize
    for sh in record.get("shards", []):
        path = out / "shards" / sh["name"]
        if not path.exists() or path.stat().length != sh["tokens"] * itemsize:
            return None
    return record


def _clear_unit(out: epath.Path, index: int) -> None:
    """Removes the shards and record of a unit that will be redone (a redone unit may have fewer parts)."""
    (out / "units" / unit_name(index)).unlink(missing_ok=True)
    for old in (out / "shards").glob(f"{index:05d}-*.bin"):
        old.unlink(missing_ok=True)


def _common_pins(jobs: list[UnitJob]) -> dict:
    """The pins every unit shares (all but the source): what a finished directory's manifest records."""
    pins = jobs[0].pins() if jobs else {}
    return {k: v for k, v in pins.items() if k != "source"}


def _run_units(todo: list, workers: int, tok_json: str, bar) -> dict[int, dict]:
    """Tokenizes the units in this process (workers <= 1 or one unit) or a spawned pool; unit index -> record."""
    records = {}
    if workers <= 1 or len(todo) <= 1:
        q = queue_lib.SimpleQueue()
        _init_worker(tok_json, q)
        for job in todo:
            records[job.index] = _tokenize_unit(job)
            while not q.empty():
                bar.update(q.get()[0])
        return records
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    n_proc = min(workers, len(todo))
    threads = max(1, (os.cpu_count() or 1) // n_proc)
    with ctx.Pool(n_proc, initializer=_init_worker, initargs=(tok_json, q, threads)) as pool:
        pending = pool.map_async(_tokenize_unit, todo, chunksize=1)
        while True:
            try:
                bar.update(q.get(timeout=0.2)[0])
            except queue_lib.Empty:
                if pending.ready():
                    break
        for rec in pending.get():
            records[rec["index"]] = rec
        while True:
            try:
                bar.update(q.get_nowait()[0])
            except queue_lib.Empty:
                break
    return records


def tokenize_files(paths: list[epath.Path], out: epath.Path, info: tokenizers_lib.TokenizerInfo, *, text_field: str = "text",
                   workers: int = 1, shard_tokens: int = DEFAULT_SHARD_TOKENS, field: str = "--inputs",
                   progress: bool = True, desc: str = "tokenize") -> dict:
    """Tokenizes `paths` into `out` (resuming finished units); returns the manifest."""
    from tqdm import tqdm  # noqa: PLC0415

    prints = [formats.fingerprint(p) for p in paths]
    existing = read_manifest(out, f"--out={out}")
    if existing is not None and existing["tokenizer_sha256"] != info.sha256:
        raise DataError(f"--out={out} holds tokens from another tokenizer (sha256 {existing['tokenizer_sha256'][:12]}, "
                        f"this one {info.sha256[:12]}); give a new --out directory")
    jobs = [UnitJob(i, str(p), fp, str(out), text_field, field, info.dtype, info.eos_id, info.bos_id, shard_tokens,
                    info.sha256) for i, (p, fp) in enumerate(zip(paths, prints))]
    if existing is not None and existing.get("pins") == _common_pins(jobs) and existing["sources"] == prints:
        return existing
    created = not out.exists()
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "units").mkdir(parents=True, exist_ok=True)
    tok_json = info.tokenizer.to_str()
    try:
        records = {}
        todo = []
        for job in jobs:
            rec = _done_record(out, job)
            if rec is not None:
                records[job.index] = rec
            else:
                todo.append(job)
        if todo and existing is not None:
            # the directory's bytes are about to change: it stops being a finished directory first
            (out / "manifest.json").unlink(missing_ok=True)
        for job in todo:
            _clear_unit(out, job.index)
        if todo:
            log.info("%s: %d of %d input files to tokenize (%d done), %d worker(s)", desc, len(todo), len(jobs),
                     len(records), workers)
        # the bar is for people at a terminal; logs and CI keep one line per event
        bar = tqdm(desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True,
                   disable=not progress or not todo or not sys.stderr.isatty())
        try:
            records.update(_run_units(todo, workers, tok_json, bar))
        finally:
            bar.close()
    except BaseException:
        if created:  # bad input in a fresh directory: leave nothing behind
            with contextlib.suppress(Exception):
                out.rmtree()
        raise
    shards = [dict(s, unit=i) for i in range(len(jobs)) for s in records[i]["shards"]]
    manifest = {
        "format": FORMAT, "dtype": info.dtype, "tokenizer_sha256": info.sha256, "tokenizer_size": info.size,
        "eos_token": info.eos_token, "eos_id": info.eos_id, "bos_token": info.bos_token, "bos_id": info.bos_id,
        "text_field": text_field, "shard_tokens": shard_tokens, "pins": _common_pins(jobs),
        "total_tokens": sum(s["tokens"] for s in shards),
        "documents": sum(records[i]["documents"] for i in range(len(jobs))),
        "sources": prints, "shards": shards,
    }
    storage.atomic_write_text(out / "tokenizer.json", tok_json)
    storage.atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return manifest
