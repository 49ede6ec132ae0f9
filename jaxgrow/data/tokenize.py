"""The `tokenize` command: validates everything cheap first (inputs, tokenizer, flags), then streams the
inputs into token shards with data.shards.

    jaxgrow tokenize --inputs 'gs://b/web/*.jsonl.zst,/data/books/*.parquet' --out DIR \
        [--tokenizer tokenizer.json | --vocab_size 32768] [--text_field text] [--workers K]"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from jaxgrow import storage
from jaxgrow.data import formats, shards, tokenizers as tokenizers_lib
from jaxgrow.data.formats import DataError


log = logging.getLogger("jaxgrow")



def run_command(inputs: str, out: str, tokenizer: str = "", vocab_size: int = 0, text_field: str = "text",
                workers: int = 1, eos_token: str = "", bos_token: str = "",
                shard_tokens: int = shards.DEFAULT_SHARD_TOKENS, sample_bytes: int = tokenizers_lib.DEFAULT_SAMPLE_BYTES,
                before_write: Callable[[], Any] | None = None) -> dict:
    """The `tokenize` subcommand: validates everything cheap first, then writes --out. before_write() runs between
    the two (the CLI takes --out's writer lock there)."""
    if not inputs:
        raise DataError("--inputs is required: comma-separated globs of " + ", ".join(formats.FORMATS) + " files")
    if not out:
        raise DataError("--out is required: the directory to write shards and manifest.json into")
    if workers < 1:
        raise DataError(f"--workers={workers} must be >= 1")
    if shard_tokens < 1:
        raise DataError(f"--shard_tokens={shard_tokens} must be >= 1")
    out_path = storage.as_path(out, "--out")
    storage.check_writable(out_path, "--out")  # never creates a bucket (a typo would silently make a new one)
    paths = formats.expand_inputs(inputs, "--inputs")
    formats.precheck(paths, text_field, "--inputs")
    t0 = time.perf_counter()
    if tokenizer:
        tok = tokenizers_lib.read_tokenizer(tokenizer, "--tokenizer")
    elif (out_path / "tokenizer.json").exists():  # resuming a run that trained its tokenizer
        tok = tokenizers_lib.read_tokenizer(str(out_path / "tokenizer.json"), f"--out={out} (its tokenizer.json)")
    else:
        if vocab_size <= 0:
            raise DataError("give --tokenizer PATH (a tokenizer.json, SentencePiece .model or tiktoken file) or --vocab_size N to train a byte-level BPE")
        tok = tokenizers_lib.train_bpe(tokenizers_lib.sample_texts(paths, text_field, "--inputs", sample_bytes), vocab_size, "--vocab_size")
        log.info("trained a byte-level BPE of %d tokens on <= %d MB of the inputs in %.1fs", vocab_size,
                 sample_bytes >> 20, time.perf_counter() - t0)
    info = tokenizers_lib.describe(tok, eos_token, bos_token, f"--tokenizer={tokenizer}" if tokenizer else "the tokenizer")
    if vocab_size and info.size > vocab_size:
        raise DataError(f"--tokenizer={tokenizer} has {info.size} tokens, more than --vocab_size={vocab_size}")
    if (out_path / "tokenizer.json").exists() and not (out_path / "manifest.json").exists():
        pass  # an interrupted run: units are checked against their fingerprints
    if before_write is not None:
        before_write()
    manifest = shards.tokenize_files(paths, out_path, info, text_field=text_field, workers=workers,
                                     shard_tokens=shard_tokens)
    return manifest
