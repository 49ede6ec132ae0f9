"""Raw input formats: resolving globs to files, reading documents from them as a stream, fingerprints.

The bottom of the data wing (it imports only storage and config). Inputs are local or any epath URL:
`.txt` (one document per file, read in ~1 MB line-aligned pieces), `.jsonl`, `.jsonl.gz`, `.jsonl.zst`
(one JSON object per line, text in the text field), `.parquet` (the text-field column, one row group at
a time). `iter_documents` yields (text, ends_document) pieces and turns every kind of damage (truncated
gzip/zstd frames, bad JSON lines, non-UTF-8 bytes, unreadable Parquet) into a one-line DataError naming
the file. `fingerprint` (path, size, mtime) identifies an input's content cheaply: caches and units of
work record it."""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import json
from typing import Iterator

from etils import epath

from jaxgrow import storage
from jaxgrow.config import InputError


FORMATS = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
TXT_PIECE_BYTES = 1 << 20    # .txt files are read in line-aligned pieces of about this size


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


def _check_encodable(text: str, where: str) -> None:
    """JSON can spell a lone surrogate (\\ud800), which no tokenizer can encode: bad input, named by its line."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where} holds a lone UTF-16 surrogate ({text[e.start:e.end]!r} at character {e.start}), "
                        "which is not text; fix or drop that line") from None


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
                    _check_encodable(text, f"{field}: {path}:{i}")
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


def read_documents(files: list, text_field: str, field: str) -> list[str]:
    """Whole documents of raw files, in memory (for small held-out sets: task making, reports)."""
    docs, current = [], []
    for path in files:
        for text, ends in iter_documents(epath.Path(str(path)), text_field, field):
            current.append(text)
            if ends:
                doc = "".join(current)
                current = []
                if doc.strip():
                    docs.append(doc)
    if not docs:
        raise DataError(f"{field}: the files hold no text")
    return docs
