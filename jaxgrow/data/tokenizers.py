"""Tokenizers: loading a Hugging Face tokenizer.json, resolving its EOS/BOS, checking it against the
model's vocabulary, and training a byte-level BPE on a bounded sample when none is given.

`TokenizerInfo` is what the rest of the data wing needs to know of a tokenizer: the object, its
sha256 (what tokenized directories and caches pin), the EOS/BOS tokens and ids, its size and the id
dtype of its shards. Depends on formats (for the BPE training sample) and nothing above it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from etils import epath

from jaxgrow import storage
from jaxgrow.data import formats
from jaxgrow.data.formats import DataError


EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")
DEFAULT_EOS = "<|endoftext|>"
DEFAULT_SAMPLE_BYTES = 64 << 20  # text sampled to train a BPE when no tokenizer is given


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


def read_tokenizer(path: str, field: str = "data.tokenizer"):
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


def load_tokenizer(path: str | Path, vocab_size: int, field: str = "data.tokenizer", eos_token: str = "",
                   bos_token: str = "") -> TokenizerInfo:
    """Loads a tokenizer.json (or a directory holding one) and checks it against model.vocab_size."""
    tok = read_tokenizer(str(path), field)
    info = describe(tok, eos_token, bos_token, f"{field}: {path}")
    check_vocab(info, vocab_size, f"{field}: {path}")
    return info


def check_vocab(info: TokenizerInfo, vocab_size: int, source: str) -> None:
    if info.size > vocab_size:
        raise DataError(f"{source} has {info.size} tokens but model.vocab_size={vocab_size}; model.vocab_size "
                        "must be >= the tokenizer's size (larger pads, e.g. to a multiple of 128)")


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
        for text, _ in formats.iter_documents(p, text_field, field):
            text = text[:per_file - taken]
            taken += len(text)
            yield text
            if taken >= per_file:
                break
