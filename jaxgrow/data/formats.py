"""Raw input formats: resolving globs to files, reading documents from them as a stream, fingerprints.

The bottom of the data wing (it imports only storage and config). Inputs are local or any epath URL:
`.txt` (one document per file, streamed), `.jsonl`, `.jsonl.gz`, `.jsonl.zst` (one JSON object per line,
text in the text field), `.parquet` (the text-field column, one row group at a time). `iter_documents`
yields (text, ends_document) pieces of at most PIECE_CHARS characters (`split_text`: a longer document
is cut right before a space, so that tokenizing the pieces gives the whole document's ids) and turns
every kind of damage (truncated gzip/zstd frames, bad JSON lines, non-UTF-8 bytes, unreadable Parquet,
a text field that is not a string) into a one-line DataError naming the file. `fingerprint` (path, size,
mtime) identifies an input's content cheaply: caches and units of work record it."""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import json
import re
from typing import Iterator

from etils import epath

from jaxgrow import storage
from jaxgrow.config import InputError


FORMATS = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
# The longest piece of text tokenized at once (characters): a longer document (a .txt file, or a .jsonl/.parquet
# value) is tokenized in pieces and its ids concatenated, so a worker's memory is bounded whatever the document's
# size (one 50 MB line peaked at 4.5 GB RSS when tokenized whole; see split_text).
PIECE_CHARS = 1 << 20


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


# Where a long document is cut: right before a space that has non-whitespace on both sides ("word| word"), else
# right before any such whitespace character, else (no whitespace in the whole piece) at the limit.
_CUTS = (re.compile(r"(?<=\S) (?=\S)"), re.compile(r"(?<=\S)\s(?=\S)"))


def _cut(text: str, limit: int) -> int:
    """Where to end the first piece of `text` (longer than `limit`): an index in [1, limit], the last cut point of
    the first kind there is (looked for in the last 64K characters first: one short regex pass in the common case)."""
    end = min(len(text), limit + 2)  # a cut before index `limit` looks at the character after it
    for pattern in _CUTS:
        for lo in dict.fromkeys((max(1, limit - (1 << 16)), 1)):
            last = None
            for last in pattern.finditer(text, lo, end):
                pass
            if last is not None:
                return last.start()
    return limit


def split_text(text: str, limit: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in pieces of at most `limit` characters (the text itself when it is that short), concatenating to it.

    A piece ends right before a space between two non-space characters where there is one: byte-level BPE
    tokenizers (GPT-2 style, `train_bpe`'s, tiktoken files) pre-tokenize so that no token spans " word"'s space and
    the character before it, so the pieces' ids, concatenated, are the whole text's ids. Failing that a piece ends
    before other whitespace (a newline: equal ids with GPT-2's pattern, not always with cl100k/Llama 3's, which join
    punctuation and the newlines after it), and a piece with no whitespace at all is cut at the limit (the ids can
    differ around that cut). Tokenizers that add something to every text they encode (SentencePiece's dummy prefix
    "\u2581") add it at each cut too. Only documents longer than `limit` are cut."""
    while len(text) > limit:
        end = _cut(text, limit)
        yield text[:end]
        text = text[end:]
    yield text


def _value_kind(value) -> str:
    """How a JSON value that is not a string is named in an error."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({json.dumps(value)})"
    return "an array" if isinstance(value, list) else "an object"


def _pieces(text: str) -> Iterator[tuple[str, bool]]:
    """One document's (piece, ends_document) pairs."""
    pieces = split_text(text, PIECE_CHARS)
    last = next(pieces)
    for piece in pieces:
        yield last, False
        last = piece
    yield last, True


def iter_documents(path: epath.Path, text_field: str, field: str) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of one input file, streamed: each piece at most PIECE_CHARS characters
    (split_text), the last piece of each document with ends_document. Raises DataError on bad content: a text
    field that is missing, not a string, or null (.jsonl and .parquet alike: nothing is skipped without a word;
    an empty string is an empty document, skipped)."""
    fmt = input_format(str(path))
    try:
        if fmt == ".parquet":
            yield from _parquet_documents(path, text_field, field)
            return
        with contextlib.ExitStack() as stack:
            f = _text_lines(path, fmt, stack)
            if fmt == ".txt":
                # streamed in reads of PIECE_CHARS characters, so memory is bounded for any file, even one line;
                # the pieces are split_text's of the whole file
                buf = ""
                while True:
                    chunk = f.read(PIECE_CHARS)
                    buf += chunk
                    # a cut looks one character past the limit: with more to read, cut once that one is in
                    while len(buf) > PIECE_CHARS + 1 or (not chunk and len(buf) > PIECE_CHARS):
                        end = _cut(buf, PIECE_CHARS)
                        yield buf[:end], False
                        buf = buf[end:]
                    if not chunk:
                        break
                yield buf, True
                return
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[text_field]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{field}: {path}:{i} is not a JSON object with a {text_field!r} string "
                                    "(data.text_field / --text_field)") from None
                if not isinstance(text, str):
                    raise DataError(f"{field}: {path}:{i}: field {text_field!r} holds {_value_kind(text)}, not a "
                                    "string; the text field must be a string in every line (data.text_field / "
                                    "--text_field): fix or drop that line")
                if text:
                    _check_encodable(text, f"{field}: {path}:{i}")
                    yield from _pieces(text)
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


def _is_text_type(t) -> bool:
    import pyarrow as pa  # noqa: PLC0415

    if pa.types.is_dictionary(t):
        t = t.value_type
    string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    return pa.types.is_string(t) or pa.types.is_large_string(t) or string_view(t)


def _parquet_file(path: epath.Path, field: str, text_field: str, stack: contextlib.ExitStack, nulls: bool = False):
    """The open ParquetFile, its text column checked from the footer alone: present, of a string type (an int,
    float, bool, list, struct or binary column is refused, never skipped) and, with `nulls`, without null values
    where the row groups' statistics count them (a writer that records no statistics leaves nulls to the reader,
    which refuses the first one by its row)."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        pf = pq.ParquetFile(stack.enter_context(_open_binary(path)))
    except Exception as e:  # noqa: BLE001  (pyarrow raises ArrowInvalid / OSError)
        raise DataError(f"{field}: {path} is not a readable Parquet file ({type(e).__name__})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{field}: {path} has no {text_field!r} column (columns: {names}); "
                        "set data.text_field / --text_field")
    kind = pf.schema_arrow.field(text_field).type
    if not _is_text_type(kind):
        raise DataError(f"{field}: {path}: column {text_field!r} holds {kind} values; the text field must be strings "
                        "(data.text_field / --text_field)")
    if nulls and pf.num_row_groups:
        meta = pf.metadata
        leaf = next((k for k in range(meta.num_columns) if meta.row_group(0).column(k).path_in_schema == text_field),
                    None)
        counts = [0] * pf.num_row_groups
        for g in range(pf.num_row_groups) if leaf is not None else ():
            stats = meta.row_group(g).column(leaf).statistics
            if stats is not None and stats.has_null_count:
                counts[g] = stats.null_count
        if sum(counts):
            raise DataError(f"{field}: {path}: column {text_field!r} holds {sum(counts)} null value(s) (first in row "
                            f"group {next(g for g, c in enumerate(counts) if c)}); the text field must be a string in "
                            "every row, as in .jsonl (data.text_field / --text_field): drop or fill those rows")
    return pf


def _parquet_documents(path: epath.Path, text_field: str, field: str) -> Iterator[tuple[str, bool]]:
    with contextlib.ExitStack() as stack:
        pf = _parquet_file(path, field, text_field, stack)
        row = 0
        for g in range(pf.num_row_groups):
            column = pf.read_row_group(g, columns=[text_field]).column(0)
            for start in range(0, len(column), 1024):  # Python strings for 1024 rows at a time, not a row group's
                for text in column.slice(start, 1024).to_pylist():
                    if text is None:
                        raise DataError(f"{field}: {path}: row {row} (0-based) of column {text_field!r} is null; the "
                                        "text field must be a string in every row, as in .jsonl (data.text_field / "
                                        "--text_field): drop or fill it")
                    if text:
                        yield from _pieces(text)
                    row += 1


def precheck(paths: list[epath.Path], text_field: str, field: str) -> None:
    """Cheap checks before anything is written: files non-empty, text files start as UTF-8, and Parquet footers
    (schema and statistics, no data read) hold the text column, of strings, with no null in it."""
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
                _parquet_file(p, field, text_field, stack, nulls=True)


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
