"""Streaming, parallel, resumable tokenization into fixed-width binary shards plus a manifest.

    python -m jaxgrow.main tokenize --inputs 'gs://b/web/*.jsonl.zst,/data/books/*.parquet' --out DIR \
        [--tokenizer tokenizer.json | --vocab_size 32768] [--text_field text] [--workers K]

Inputs (local or any epath URL): `.txt` (one document per file, read in ~1 MB line-aligned pieces),
`.jsonl`, `.jsonl.gz`, `.jsonl.zst` (one JSON object per line, text in --text_field), `.parquet`
(the --text_field column, one row group at a time). Nothing holds more than one batch of
documents (~4 MB of text) per worker.

Output DIR:
    tokenizer.json                the tokenizer the ids come from
    shards/UUUUU-PPPP.bin         raw little-endian uint16 (vocab <= 65536) or uint32 token ids:
                                  documents back to back, each followed by EOS (and preceded by BOS
                                  when one is configured); input file U, part P (parts of
                                  --shard_tokens tokens)
    units/UUUUU.json              one record per finished input file (resume skips these)
    manifest.json                 written last: dtype, tokenizer sha256, eos/bos ids, sources with
                                  fingerprints, shards with token counts

Why flat binary shards instead of ArrayRecord: every training read is "tokens [a, b) of the
concatenated corpus" for arbitrary window offsets, which on fixed-width ids is one memmap slice
locally and one ranged GET remotely, with no per-record index or framing; the window length
(seq_len) is not baked into the files, so one tokenized corpus serves every seq_len and packing.

Determinism: each input file is one unit of work whose shards depend only on that file and the
tokenizer, and the manifest lists units in sorted-input order, so the bytes are identical for any
--workers. Workers are spawned processes (tokenizers' Rust pool is not fork-safe).
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import multiprocessing
import os
import queue as queue_lib
import time
from typing import Any, Iterator

import numpy as np
from etils import epath

from jaxgrow import storage
from jaxgrow.config import InputError

log = logging.getLogger("jaxgrow")

FORMAT = "jaxgrow.tokens/1"
FORMATS = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")
DEFAULT_EOS = "<|endoftext|>"
BATCH_TEXT_BYTES = 4 << 20   # text encoded per encode_batch call
TXT_PIECE_BYTES = 1 << 20    # .txt files are read in line-aligned pieces of about this size
DEFAULT_SHARD_TOKENS = 1 << 26
DEFAULT_SAMPLE_BYTES = 64 << 20  # text sampled to train a BPE when no tokenizer is given


class DataError(InputError):
    """Bad data input; the message names the field or file and what would be valid."""


# ----------------------------------------------------------------------------------------------
# Inputs


def input_format(path: str) -> str:
    name = str(path).lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def expand_inputs(globs: str, field: str) -> list[epath.Path]:
    """Comma-separated globs (local or remote) -> sorted, de-duplicated files of a known format."""
    out: dict[str, epath.Path] = {}
    for pattern in [g.strip() for g in globs.split(",") if g.strip()]:
        matches = [m for m in storage.glob(pattern, field) if not m.is_dir()]
        if not matches:
            raise DataError(f"{field}: no file matches {pattern!r}; give existing {'/'.join(FORMATS)} files")
        for m in matches:
            if not input_format(str(m)):
                raise DataError(f"{field}: {m} has suffix {''.join(epath.Path(str(m)).suffixes) or '(none)'!r}, "
                                f"an unknown format; valid: {', '.join(FORMATS)}")
            out[str(m)] = m
    if not out:
        raise DataError(f"{field}={globs!r} names no files; give {'/'.join(FORMATS)} files")
    return [out[k] for k in sorted(out)]


def fingerprint(path: epath.Path) -> dict:
    """What identifies an input's content cheaply: path, size, modification time."""
    st = path.stat()
    return {"path": str(path), "size": int(st.length), "mtime": float(st.mtime or 0)}


def _open_binary(path: epath.Path):
    return path.open("rb")


def _text_lines(path: epath.Path, fmt: str, stack: contextlib.ExitStack) -> io.TextIOBase:
    raw = stack.enter_context(_open_binary(path))
    if fmt == ".jsonl.gz":
        raw = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    elif fmt == ".jsonl.zst":
        raw = io.BufferedReader(_ZstdReader(raw), 1 << 20)
    return stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8"))


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression that, unlike zstandard's stream_reader, reports a truncated
    last frame (EOFError) instead of silently ending; concatenated frames are read in turn."""

    def __init__(self, raw):
        import zstandard  # noqa: PLC0415

        self._zstd, self._raw, self._buf, self._pos = zstandard, raw, b"", 0
        self._obj = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("compressed data ended before the end of a zstd frame")
                return 0
            while chunk:
                self._in_frame = True
                self._buf += self._obj.decompress(chunk)
                chunk = b""
                if self._obj.eof:
                    chunk = self._obj.unused_data
                    self._obj = self._zstd.ZstdDecompressor().decompressobj()
                    self._in_frame = False
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        if self._pos == len(self._buf):
            self._buf, self._pos = b"", 0
        return n


def iter_documents(path: epath.Path, text_field: str, field: str) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of one input file, streamed. Raises DataError on bad content."""
    fmt = input_format(str(path))
    try:
        if fmt == ".parquet":
            yield from _parquet_documents(path, text_field, field)
            return
        with contextlib.ExitStack() as stack:
            f = _text_lines(path, fmt, stack)
            if fmt == ".txt":
                piece, size = [], 0
                for line in f:
                    piece.append(line)
                    size += len(line)
                    if size >= TXT_PIECE_BYTES and line.endswith("\n"):
                        yield "".join(piece), False
                        piece, size = [], 0
                yield "".join(piece), True
                return
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[text_field]
                    if not isinstance(text, str):
                        raise TypeError
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{field}: {path}:{i} is not a JSON object with a {text_field!r} string "
                                    "(data.text_field / --text_field)") from None
                if text:
                    yield text, True
    except DataError:
        raise
    except (EOFError, gzip.BadGzipFile, OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{field}: {path} is truncated or corrupt ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); give a complete {fmt} file") from None
    except Exception as e:  # zstandard.ZstdError and pyarrow errors have no common base
        if type(e).__module__.split(".")[0] in ("zstandard", "pyarrow"):
            raise DataError(f"{field}: {path} is truncated or corrupt ({type(e).__name__}); "
                            f"give a complete {fmt} file") from None
        raise


def _parquet_file(path: epath.Path, field: str, text_field: str, stack: contextlib.ExitStack):
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        pf = pq.ParquetFile(stack.enter_context(_open_binary(path)))
    except Exception as e:  # noqa: BLE001  (pyarrow raises ArrowInvalid / OSError)
        raise DataError(f"{field}: {path} is not a readable Parquet file ({type(e).__name__})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{field}: {path} has no {text_field!r} column (columns: {names}); "
                        "set data.text_field / --text_field")
    return pf


def _parquet_documents(path: epath.Path, text_field: str, field: str) -> Iterator[tuple[str, bool]]:
    with contextlib.ExitStack() as stack:
        pf = _parquet_file(path, field, text_field, stack)
        for g in range(pf.num_row_groups):
            for text in pf.read_row_group(g, columns=[text_field]).column(0).to_pylist():
                if isinstance(text, str) and text:
                    yield text, True


def precheck(paths: list[epath.Path], text_field: str, field: str) -> None:
    """Cheap checks before anything is written: files non-empty, Parquet schemas hold the column."""
    for p in paths:
        if fingerprint(p)["size"] == 0:
            raise DataError(f"{field}: {p} is empty")
        if input_format(str(p)) in (".txt", ".jsonl"):
            with _open_binary(p) as f:
                head = f.read(1 << 16)
            try:
                if b"\x00" in head:
                    raise UnicodeDecodeError("utf-8", head, 0, 1, "NUL byte")
                codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
            except UnicodeDecodeError:
                raise DataError(f"{field}: {p} is binary, not UTF-8 text; give text files") from None
        if input_format(str(p)) == ".parquet":
            with contextlib.ExitStack() as stack:
                _parquet_file(p, field, text_field, stack)


# ----------------------------------------------------------------------------------------------
# Tokenizers


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    tokenizer: Any   # tokenizers.Tokenizer
    sha256: str
    eos_token: str
    eos_id: int
    bos_token: str   # '' = none
    bos_id: int      # -1 = none
    size: int

    @property
    def dtype(self) -> str:
        return "uint16" if self.size <= 1 << 16 else "uint32"


def tokenizer_hash(tok) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def describe(tok, eos_token: str = "", bos_token: str = "", source: str = "tokenizer") -> TokenizerInfo:
    """Resolves the EOS (configured, else the first of EOS_CANDIDATES present) and optional BOS."""
    vocab = tok.get_vocab(with_added_tokens=True)
    if eos_token:
        if eos_token not in vocab:
            raise DataError(f"{source} has no EOS token {eos_token!r} (data.eos_token); give a token it has")
    else:
        eos_token = next((t for t in EOS_CANDIDATES if t in vocab), "")
        if not eos_token:
            raise DataError(f"{source} has none of the EOS tokens {list(EOS_CANDIDATES)}; "
                            "set data.eos_token (or --eos_token) to its end-of-document token")
    bos_id = -1
    if bos_token:
        if bos_token not in vocab:
            raise DataError(f"{source} has no BOS token {bos_token!r} (data.bos_token); give a token it has or ''")
        bos_id = vocab[bos_token]
    size = max(tok.get_vocab_size(with_added_tokens=True), max(vocab.values()) + 1)
    return TokenizerInfo(tok, tokenizer_hash(tok), eos_token, vocab[eos_token], bos_token, bos_id, size)


def load_tokenizer(path: str, field: str = "data.tokenizer"):
    """A tokenizers.Tokenizer from a tokenizer.json file or a directory holding one (any epath)."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    p = storage.as_path(path, field)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise DataError(f"{field}: {p} does not exist; give a tokenizer.json (or a directory holding one), "
                        "or '' to train one")
    try:
        return Tokenizer.from_str(p.read_text())
    except Exception:  # noqa: BLE001  (tokenizers raises its own exception types)
        raise DataError(f"{field}: {p} is not a Hugging Face tokenizers JSON file") from None


def train_bpe(texts, vocab_size: int, field: str = "model.vocab_size"):
    """A byte-level BPE (GPT-2 style, lossless) with exactly `vocab_size` tokens incl. <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

    alphabet = len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if vocab_size < alphabet:
        raise DataError(f"{field}={vocab_size} is too small for a byte-level BPE tokenizer "
                        f"(needs >= {alphabet}); raise it or give a tokenizer")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[DEFAULT_EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        # small corpus: pad with never-produced tokens so ids match the model's vocab. They go into the BPE
        # model's vocabulary (no merge produces them), not in as added tokens: every added token is matched
        # against all input text, and thousands of them made encoding 1.6x slower (same ids).
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        first = max(max(vocab.values()), max(t["id"] for t in spec["added_tokens"])) + 1
        vocab.update({f"<|unused_{i}|>": first + i for i in range(missing)})
        tok = Tokenizer.from_str(json.dumps(spec))
    return tok


def sample_texts(paths: list[epath.Path], text_field: str, field: str, budget: int) -> Iterator[str]:
    """A bounded, deterministic sample: up to budget / n_files characters from the start of each file."""
    per_file = max(1, budget // max(1, len(paths)))
    for p in paths:
        taken = 0
        for text, _ in iter_documents(p, text_field, field):
            text = text[:per_file - taken]
            taken += len(text)
            yield text
            if taken >= per_file:
                break


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


_WORKER: dict = {}


def _init_worker(tokenizer_json: str, progress, rayon_threads: int | None = None) -> None:
    if rayon_threads:
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
        for piece in iter_documents(epath.Path(job.source), job.text_field, job.field):
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
    record = {"index": job.index, "source": job.fingerprint, "documents": documents, "shards": writer.shards}
    storage.atomic_write_text(out / "units" / unit_name(job.index), json.dumps(record, sort_keys=True))
    return record


# ----------------------------------------------------------------------------------------------
# The command


def read_manifest(directory: str | epath.Path) -> dict | None:
    p = epath.Path(str(directory)) / "manifest.json"
    if not p.exists():
        return None
    return json.loads(p.read_text())


def is_tokenized_dir(path: str) -> bool:
    try:
        p = storage.as_path(path)
        return p.is_dir() and (p / "manifest.json").exists()
    except InputError:
        return False


def _done_record(out: epath.Path, job: UnitJob) -> dict | None:
    p = out / "units" / unit_name(job.index)
    if not p.exists():
        return None
    record = json.loads(p.read_text())
    if record["source"] != job.fingerprint:
        return None
    if not all((out / "shards" / s["name"]).exists() for s in record["shards"]):
        return None
    return record


def tokenize_files(paths: list[epath.Path], out: epath.Path, info: TokenizerInfo, *, text_field: str = "text",
                   workers: int = 1, shard_tokens: int = DEFAULT_SHARD_TOKENS, field: str = "--inputs",
                   progress: bool = True, desc: str = "tokenize") -> dict:
    """Tokenizes `paths` into `out` (resuming finished units); returns the manifest."""
    from tqdm import tqdm  # noqa: PLC0415

    prints = [fingerprint(p) for p in paths]
    existing = read_manifest(out)
    if existing is not None and existing["tokenizer_sha256"] != info.sha256:
        raise DataError(f"--out={out} holds tokens from another tokenizer (sha256 {existing['tokenizer_sha256'][:12]}, "
                        f"this one {info.sha256[:12]}); give a new --out directory")
    if existing is not None and existing["sources"] == prints and existing["text_field"] == text_field:
        return existing
    jobs = [UnitJob(i, str(p), fp, str(out), text_field, field, info.dtype, info.eos_id, info.bos_id, shard_tokens)
            for i, (p, fp) in enumerate(zip(paths, prints))]
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
        if todo:
            log.info("%s: %d of %d input files to tokenize (%d done), %d worker(s)", desc, len(todo), len(jobs),
                     len(records), workers)
        bar = tqdm(desc=desc, unit="tok", unit_scale=True, disable=not progress or not todo, dynamic_ncols=True)
        try:
            if workers <= 1 or len(todo) <= 1:
                q = queue_lib.SimpleQueue()
                _init_worker(tok_json, q)
                for job in todo:
                    records[job.index] = _tokenize_unit(job)
                    while not q.empty():
                        bar.update(q.get()[0])
            else:
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
        "text_field": text_field, "total_tokens": sum(s["tokens"] for s in shards),
        "documents": sum(records[i]["documents"] for i in range(len(jobs))),
        "sources": prints, "shards": shards,
    }
    storage.atomic_write_text(out / "tokenizer.json", tok_json)
    storage.atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def run_command(inputs: str, out: str, tokenizer: str = "", vocab_size: int = 0, text_field: str = "text",
                workers: int = 1, eos_token: str = "", bos_token: str = "",
                shard_tokens: int = DEFAULT_SHARD_TOKENS, sample_bytes: int = DEFAULT_SAMPLE_BYTES) -> dict:
    """The `tokenize` subcommand: validates everything cheap first, then writes --out."""
    if not inputs:
        raise DataError("--inputs is required: comma-separated globs of " + ", ".join(FORMATS) + " files")
    if not out:
        raise DataError("--out is required: the directory to write shards and manifest.json into")
    if workers < 1:
        raise DataError(f"--workers={workers} must be >= 1")
    if shard_tokens < 1:
        raise DataError(f"--shard_tokens={shard_tokens} must be >= 1")
    out_path = storage.as_path(out, "--out")
    paths = expand_inputs(inputs, "--inputs")
    precheck(paths, text_field, "--inputs")
    t0 = time.perf_counter()
    if tokenizer:
        tok = load_tokenizer(tokenizer, "--tokenizer")
    elif (out_path / "tokenizer.json").exists():  # resuming a run that trained its tokenizer
        tok = load_tokenizer(str(out_path / "tokenizer.json"), f"--out={out} (its tokenizer.json)")
    else:
        if vocab_size <= 0:
            raise DataError("give --tokenizer PATH (a tokenizer.json) or --vocab_size N to train a byte-level BPE")
        tok = train_bpe(sample_texts(paths, text_field, "--inputs", sample_bytes), vocab_size, "--vocab_size")
        log.info("trained a byte-level BPE of %d tokens on <= %d MB of the inputs in %.1fs", vocab_size,
                 sample_bytes >> 20, time.perf_counter() - t0)
    info = describe(tok, eos_token, bos_token, f"--tokenizer={tokenizer}" if tokenizer else "the tokenizer")
    if vocab_size and info.size > vocab_size:
        raise DataError(f"--tokenizer={tokenizer} has {info.size} tokens, more than --vocab_size={vocab_size}")
    if (out_path / "tokenizer.json").exists() and not (out_path / "manifest.json").exists():
        pass  # an interrupted run: units are checked against their fingerprints
    manifest = tokenize_files(paths, out_path, info, text_field=text_field, workers=workers,
                              shard_tokens=shard_tokens)
    return manifest
