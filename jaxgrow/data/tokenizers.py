"""Tokenizers: loading a Hugging Face tokenizer.json, a SentencePiece model or a tiktoken BPE file,
resolving its EOS/BOS, checking it against the model's vocabulary, and training a byte-level BPE on
a bounded sample when none is given.

SentencePiece `.model` files (Llama 2, Mistral, Gemma, T5) and tiktoken files (GPT-2's, Llama 3's
tokenizer.model) are converted once into a `tokenizers.Tokenizer`; the run stores its JSON as
tokenizer.json, so everything downstream (shards, tokenize workers, export) sees an ordinary
tokenizer.json. The conversion is deterministic, so the same file always pins the same sha256.

`TokenizerInfo` is what the rest of the data wing needs to know of a tokenizer: the object, its
sha256 (what tokenized directories and caches pin), the EOS/BOS tokens and ids, its size and the id
dtype of its shards. Depends on formats (for the BPE training sample) and nothing above it."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import struct
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


def default_eos_token(tok) -> str:
    """The first of EOS_CANDIDATES the tokenizer has ('' if none): the EOS when data.eos_token is unset."""
    vocab = tok.get_vocab(with_added_tokens=True)
    return next((t for t in EOS_CANDIDATES if t in vocab), "")


def describe(tok, eos_token: str = "", bos_token: str = "", source: str = "tokenizer") -> TokenizerInfo:
    """Resolves the EOS (configured, else the first of EOS_CANDIDATES present) and optional BOS."""
    vocab = tok.get_vocab(with_added_tokens=True)
    if eos_token:
        if eos_token not in vocab:
            raise DataError(f"{source} has no EOS token {eos_token!r} (data.eos_token); give a token it has")
    else:
        eos_token = default_eos_token(tok)
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
    """A tokenizers.Tokenizer from a tokenizer.json, a SentencePiece model or a tiktoken BPE file
    (told apart by content, not name), or a directory holding tokenizer.json or else tokenizer.model
    (any epath)."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    p = storage.as_path(path, field)
    if p.is_dir():
        p = next((p / n for n in ("tokenizer.json", "tokenizer.model") if (p / n).is_file()), p / "tokenizer.json")
    if not p.is_file():
        raise DataError(f"{field}: {p} does not exist; give a tokenizer.json, a SentencePiece .model or a tiktoken "
                        "file (or a directory holding tokenizer.json or tokenizer.model), or '' to train one")
    data = p.read_bytes()
    kind = _file_kind(data)
    if kind == "json":
        try:
            return Tokenizer.from_str(data.decode("utf-8"))
        except Exception:  # noqa: BLE001  (tokenizers raises its own exception types)
            raise DataError(f"{field}: {p} is not a Hugging Face tokenizers JSON file") from None
    try:
        return from_tiktoken(data) if kind == "tiktoken" else from_sentencepiece(data)
    except _Unsupported as e:
        raise DataError(f"{field}: {p} is a SentencePiece model with {e}, which cannot be converted; "
                        "give a BPE or unigram model, or its tokenizer.json") from None
    except Exception as e:  # noqa: BLE001  (ours: ValueError, IndexError, struct.error; tokenizers: its own)
        what = "a tiktoken BPE file" if kind == "tiktoken" else "a SentencePiece model"
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"{field}: {p} is neither a tokenizer.json nor {what} ({detail}); give a tokenizer.json, "
                        "a SentencePiece .model or a tiktoken file") from None


def load_tokenizer(path: str | Path, vocab_size: int, field: str = "data.tokenizer", eos_token: str = "",
                   bos_token: str = "") -> TokenizerInfo:
    """read_tokenizer (a tokenizer.json, SentencePiece model, tiktoken file or a directory holding one),
    described (EOS/BOS) and checked against model.vocab_size."""
    tok = read_tokenizer(str(path), field)
    info = describe(tok, eos_token, bos_token, f"{field}: {path}")
    check_vocab(info, vocab_size, f"{field}: {path}")
    return info


# ----------------------------------------------------------------------------------------------
# A run's tokenizer: W/tokenizer.json, and its identity pinned in W/run.json when the run first trained (or when
# `expand` / `prune` made it), so every later command that reads the run or brings data into it uses that tokenizer
# or refuses with one line (a replaced tokenizer.json, data tokenized with another tokenizer).

RUN_TOKENIZER = "tokenizer.json"
RUN_RECORD = "run.json"


def run_tokenizer(workdir: Any, vocab_size: int, eos_token: str = "", bos_token: str = "",
                  field: str = "--workdir") -> TokenizerInfo:
    """The tokenizer a run trained with, with its EOS and BOS ids (the run's data.eos_token / data.bos_token
    resolved as training resolved them), checked against the run's pinned identity: the one lookup of a workdir's
    tokenizer (sample, evaluate and its benchmarks, export, expand, prune, and a resumed run's cached tokenizer)."""
    path = storage.join(workdir, RUN_TOKENIZER)
    if not path.is_file():
        raise DataError(f"{field}={workdir} has no {RUN_TOKENIZER}; it is not a trained jaxgrow run (or its tokenizer "
                        "was deleted: restore it)")
    info = load_tokenizer(str(path), vocab_size, f"{path}", eos_token, bos_token)
    check_pinned(workdir, info, str(path))
    return info


def pinned(workdir: Any) -> dict | None:
    """The tokenizer identity pinned in W/run.json ({sha256, eos_token, eos_id, bos_token, bos_id, size}), or None
    (a run that never trained, or one made before the pin existed)."""
    path = storage.join(workdir, RUN_RECORD)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("tokenizer")
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise DataError(f"{path} is damaged (not a JSON object); it pins the run's tokenizer: restore it, or delete it "
                        "to pin the current tokenizer.json again") from None


def pin(workdir: Any, info: TokenizerInfo, specials: bool = True) -> None:
    """Pins `info` as the run's tokenizer in W/run.json (a pin is never replaced). specials=False (`import`,
    `expand`, `prune`: runs that have not trained yet) pins the tokenizer's content alone; its EOS and BOS ids are
    pinned when the run first trains, with the data.eos_token / data.bos_token it trains with."""
    current = pinned(workdir)
    # A pin is completed (its EOS/BOS added) at most once and never replaced: another tokenizer is refused by
    # check_pinned before anything is written.
    if current is not None and ("eos_id" in current or not specials or current["sha256"] != info.sha256):
        return
    record = {"sha256": info.sha256, "size": info.size}
    if specials:
        record.update(eos_token=info.eos_token, eos_id=info.eos_id, bos_token=info.bos_token, bos_id=info.bos_id)
    storage.atomic_write_text(storage.join(workdir, RUN_RECORD), json.dumps({"tokenizer": record}, indent=2))


def check_pinned(workdir: Any, info: TokenizerInfo, what: str) -> None:
    """`info` (the tokenizer of `what`) is the run's pinned tokenizer, EOS and BOS; DataError naming both otherwise."""
    pin_ = pinned(workdir) if workdir is not None else None
    if pin_ is None:
        return
    if pin_["sha256"] != info.sha256:
        raise DataError(f"{what}: tokenizer sha256 {info.sha256[:12]}... is not the tokenizer this run trained with "
                        f"(sha256 {pin_['sha256'][:12]}..., pinned in {storage.join(workdir, RUN_RECORD)}); give data "
                        "tokenized with the run's tokenizer, or restore the run's tokenizer.json")
    for key in ("eos_id", "bos_id"):
        if key in pin_ and pin_[key] != getattr(info, key):
            token = key.split("_")[0]
            raise DataError(f"{what}: {token.upper()} id {getattr(info, key)} ({getattr(info, token + '_token')!r}) "
                            f"differs from the run's pinned {pin_[key]} ({pin_[token + '_token']!r}); set "
                            f"data.{token}_token to the run's")


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


# ----------------------------------------------------------------------------------------------
# SentencePiece and tiktoken files -> tokenizers.Tokenizer
#
# Written here rather than taken from transformers: its 5.24 paths do not work for us:
# LlamaTokenizer(vocab_file=...) ignores the file, and TikTokenConverter needs tiktoken at run time
# (SentencePiece's own reader needs protobuf). Both formats are small: a protobuf ModelProto, and
# lines of "base64(token bytes) rank". tests/test_data_tokenizers.py checks the ids against
# sentencepiece and tiktoken themselves.


class _Unsupported(ValueError):
    """A well-formed SentencePiece model using a feature the conversion does not reproduce."""


def _file_kind(data: bytes) -> str:
    """'json', 'tiktoken' or 'sentencepiece' (the fallback: parsing it says whether it is one)."""
    if data.lstrip()[:1] == b"{":
        return "json"
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    if re.fullmatch(rb"[A-Za-z0-9+/]+={0,2} \d+", first):
        return "tiktoken"
    return "sentencepiece"


def _protobuf(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of one protobuf message: varints as (signed 64-bit) ints, the other
    wire types as bytes. Just enough protobuf to read a SentencePiece ModelProto."""
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            b = buf[i]  # IndexError on a truncated message
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value
            if shift > 70:
                raise ValueError("malformed varint")

    while i < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            v = varint()
            yield field, v - (1 << 64) if v >> 63 else v
        elif wire in (1, 2, 5):  # 64-bit, length-delimited, 32-bit
            n = varint() if wire == 2 else 8 if wire == 1 else 4
            if i + n > len(buf):
                raise ValueError("truncated protobuf field")
            yield field, buf[i:i + n]
            i += n
        else:
            raise ValueError(f"protobuf wire type {wire}")


def _message(buf: bytes, defaults: dict[int, int | bytes]) -> dict[int, int | bytes]:
    """The fields of `defaults` (field number -> default) read from one message; others are skipped."""
    out = dict(defaults)
    for field, value in _protobuf(buf):
        if field in defaults:
            if type(value) is not type(defaults[field]):
                raise ValueError(f"protobuf field {field} has the wrong wire type")
            out[field] = value
    return out


# SentencePiece's enums and field numbers (sentencepiece_model.proto)
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4  # piece types (2 unknown, 5 unused, 6 byte)
_UNIGRAM, _BPE = 1, 2
_PIECE = {1: b"", 2: b"\0\0\0\0", 3: _NORMAL}  # piece, score (float), type
# proto2 defaults. TrainerSpec: model_type unigram, treat_whitespace_as_suffix, byte_fallback,
# unk_id; NormalizerSpec: precompiled_charsmap, add_dummy_prefix, remove_extra_whitespaces,
# escape_whitespaces
_TRAINER = {3: _UNIGRAM, 24: 0, 35: 0, 40: 0}
_NORMALIZER = {2: b"", 3: 1, 4: 1, 5: 1}


def from_sentencepiece(data: bytes):
    """A tokenizers.Tokenizer giving the ids of sentencepiece's `encode(text)` for a BPE or unigram
    model (no BOS/EOS added; the data pipeline inserts them by id). Control pieces (<s>, </s>) are
    not matched in text and decode to nothing, as in sentencepiece. Exact for Mistral's and Llama's
    BPE models; known differences, all rare:
      unigram: where two segmentations score exactly the same, the libraries may pick different ones;
      an NFKC charsmap (nmt_nfkc models): tokenizers' Precompiled normalizer differs on a few
        characters (e.g. a half-width voiced sound mark after a letter);
      BPE with user-defined pieces: text that is exactly a control piece's string between two of
        them ("[REF]</s>[REF]") comes out as the control piece, where sentencepiece spells it out.
    Raises _Unsupported (whitespace-as-suffix, word/char models), else ValueError."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers  # noqa: PLC0415

    pieces: list[tuple[str, float, int]] = []  # (piece, score, type)
    trainer, normalizer = dict(_TRAINER), dict(_NORMALIZER)
    for field, value in _protobuf(data):  # ModelProto: 1 pieces, 2 trainer_spec, 3 normalizer_spec
        if field == 1 and isinstance(value, bytes):
            piece = _message(value, _PIECE)
            pieces.append((piece[1].decode("utf-8"), struct.unpack("<f", piece[2])[0], piece[3]))
        elif field == 2 and isinstance(value, bytes):
            trainer = _message(value, _TRAINER)
        elif field == 3 and isinstance(value, bytes):
            normalizer = _message(value, _NORMALIZER)
    if not pieces or not any(t == _NORMAL for _, _, t in pieces):
        raise ValueError("no vocabulary pieces")
    if trainer[24]:
        raise _Unsupported("treat_whitespace_as_suffix")
    if trainer[3] not in (_UNIGRAM, _BPE):
        names = {3: "word", 4: "char"}
        raise _Unsupported(f"model_type={names.get(trainer[3], trainer[3])}")
    byte_fallback, unk_id = bool(trainer[35]), int(trainer[40])
    if not 0 <= unk_id < len(pieces):
        raise ValueError(f"unk_id {unk_id} outside the {len(pieces)} pieces")
    user = [p for p, _, t in pieces if t == _USER_DEFINED]
    if trainer[3] == _BPE:
        # sentencepiece merges the adjacent pair whose merged piece scores best: so every split of a
        # normal piece into two normal pieces is a merge, ranked by the merged piece's score (then id)
        normal = {p: (-score, i) for i, (p, score, t) in enumerate(pieces) if t == _NORMAL}
        ranked = sorted((*normal[p], p[:k], p[k:]) for p in normal for k in range(1, len(p))
                        if p[:k] in normal and p[k:] in normal)
        model = models.BPE({p: i for i, (p, _, _) in enumerate(pieces)}, [(a, b) for *_, a, b in ranked],
                           unk_token=pieces[unk_id][0], fuse_unk=True, byte_fallback=byte_fallback,
                           ignore_merges=bool(user))  # a user-defined piece (split out below) stays whole
    else:  # sentencepiece's lattice holds only normal and user-defined pieces
        model = models.Unigram([(p, s if t in (_NORMAL, _USER_DEFINED) else -1e9) for p, s, t in pieces],
                               unk_id, byte_fallback)
    tok = Tokenizer(model)
    steps = [normalizers.Precompiled(normalizer[2])] if normalizer[2] else []
    if normalizer[4]:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if normalizer[3]:
        steps.append(normalizers.Prepend(" "))  # the dummy prefix (not added to an empty text)
    if normalizer[5]:
        steps.append(normalizers.Replace(" ", "\u2581"))
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    # sentencepiece cuts user-defined pieces out of the normalized text first, leftmost-longest
    split = [re.escape(p) for p in sorted(user, key=len, reverse=True)]
    known = {p for p, _, t in pieces if t in (_NORMAL, _USER_DEFINED) and len(p) == 1}
    if trainer[3] == _UNIGRAM and any(set(p) - known for p, _, t in pieces if t not in (_NORMAL, _USER_DEFINED)):
        # tokenizers prices an unknown character at (lowest score - 10), and the lowest score is now
        # the -1e9 above, so "<s>" typed where "<" and ">" are unknown would come out as <s>. No piece
        # holds an unknown character, so sentencepiece's segmentation always breaks around runs of
        # them (that do not start a user-defined piece): cutting there first changes nothing else and
        # leaves such a control piece unmatched.
        not_user = "(?!%s)" % "|".join(split) if split else ""
        split.append("(?:%s[^%s])+" % (not_user, "".join(map(re.escape, sorted(known)))))
    if split:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(split)), "isolated")
    control = [p for p, _, t in pieces if t == _CONTROL]
    steps = [decoders.Replace(Regex(r"\A(?:%s)\z" % "|".join(map(re.escape, control))), "")] if control else []
    # sentencepiece decodes <unk> as " \u2047 "; a placeholder keeps that space from the "\u2581" step
    steps += [decoders.Replace(Regex(r"\A%s\z" % re.escape(pieces[unk_id][0])), "\uffff"),
              decoders.Replace("\u2581", " ")]
    steps += [decoders.ByteFallback()] * byte_fallback + [decoders.Fuse()]
    steps += [decoders.Strip(" ", 1, 0)] * bool(normalizer[3]) + [decoders.Replace("\uffff", " \u2047 ")]
    tok.decoder = decoders.Sequence(steps)
    return tok


# Pre-tokenization patterns in the regex dialect of `tokenizers` (tiktoken's own strings use
# possessive quantifiers; these match the same splits, checked against tiktoken in the tests).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Llama 3.1+ names (Meta's tokenizer, as transformers' Llama converter lists them); 128000/128001
# (begin/end of text) and 128006-128009 are the same in every Llama 3 release.
_LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
                    *(f"<|reserved_special_token_{i}|>" for i in range(3, 248))]


def tiktoken_layout(ranks: dict[bytes, int]) -> tuple[str, dict[str, int]]:
    """(pattern, special tokens) for a tiktoken file: the file holds neither, the library that
    ships it does. The rule, by the number of ranks:
      128000  Llama 3 (its tokenizer.model): LLAMA3_PATTERN, 256 specials from 128000
      100256  cl100k_base: CL100K_PATTERN, <|endoftext|> 100257 (tiktoken_ext/openai_public.py)
      other   GPT-2 style (gpt2 / r50k_base, Whisper's): GPT2_PATTERN, <|endoftext|> at the lowest
              id no rank uses (50256 in GPT-2's file, 50257 in Whisper's multilingual one)."""
    if len(ranks) == 128000:
        return LLAMA3_PATTERN, {t: 128000 + i for i, t in enumerate(_LLAMA3_SPECIALS)}
    if len(ranks) == 100256:
        return CL100K_PATTERN, {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                                "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}
    used = set(ranks.values())
    return GPT2_PATTERN, {DEFAULT_EOS: next(i for i in range(len(used) + 1) if i not in used)}


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (what tokenizers' ByteLevel uses)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)}
    chars, shifted = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:  # the others, in byte order, get the characters after U+00FF
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def read_tiktoken_ranks(data: bytes) -> dict[bytes, int]:
    """token bytes -> rank from a tiktoken BPE file. Raises ValueError naming the bad line."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)  # not validated: as tiktoken's own loader
        except ValueError:  # also binascii.Error
            raise ValueError(f"line {n} is not 'base64-token rank'") from None
    if len(set(ranks.values())) != len(ranks):
        raise ValueError("two tokens share a rank")
    return ranks


def from_tiktoken(data: bytes | dict[bytes, int], pattern: str | None = None, special_tokens: dict[str, int] | None = None):
    """A tokenizers.Tokenizer giving tiktoken's ids for a BPE file (its bytes, or its ranks), with
    `tiktoken_layout`'s pattern and special tokens unless given.

    Equal to tiktoken's `encode_ordinary(text)` for text without special-token strings. Like every
    tokenizer.json, the result matches a special token's literal text ("<|endoftext|>" inside a
    document) as that token, i.e. it behaves like `encode(text, allowed_special="all")` there: the
    switch that would stop it (`encode_special_tokens`) is not saved in tokenizer.json, and the
    stored file must behave like the converted object."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: PLC0415

    ranks = read_tiktoken_ranks(data) if isinstance(data, bytes) else data
    default_pattern, default_specials = tiktoken_layout(ranks)
    pattern = pattern or default_pattern
    special_tokens = default_specials if special_tokens is None else special_tokens
    chars = _byte_chars()
    as_text = lambda b: "".join(chars[x] for x in b)  # noqa: E731
    vocab = {as_text(b): r for b, r in ranks.items() if b}  # Whisper's multilingual file ranks b"" (never produced)
    taken = set(ranks.values())
    for token, i in special_tokens.items():
        if i in taken or vocab.get(token, i) != i:
            raise ValueError(f"special token {token!r} (id {i}) collides with a BPE token")
        vocab[token] = i
    # tiktoken merges the adjacent pair whose concatenation has the lowest rank: every split of a
    # token into two tokens is a merge, ordered by the merged token's rank
    ranked = sorted((r, ranks[b[:k]], ranks[b[k:]], b[:k], b[k:]) for b, r in ranks.items()
                    for k in range(1, len(b)) if b[:k] in ranks and b[k:] in ranks)
    model = models.BPE(vocab, [(as_text(a), as_text(b)) for *_, a, b in ranked], fuse_unk=False,
                       ignore_merges=True)  # a pre-token that is itself a token stays whole, as in tiktoken
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # adds no ids
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tok
