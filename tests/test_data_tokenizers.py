"""Data wing, tokenizers: real published tokenizers (Mistral-7B's), SentencePiece and tiktoken files converted
with ids equal to sentencepiece's and tiktoken's own, an imported HF Llama trained with its own tokenizer, and the
import's tokenizer warnings."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from etils import epath

from conftest import run_cli
from data_common import make_docs, write_formats
from jaxgrow import config as config_lib
from jaxgrow.data import corpus as corpus_lib, formats, shards, store as store_lib, tokenizers as tokenizers_lib


# English, punctuation, digits, whitespace runs, leading/trailing spaces, newlines, tabs, CRLF, unicode
# (accents, CJK, emoji sequences, RTL, combining marks, full-width), code and look-alikes of special tokens.
SAMPLE = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "  Leading spaces, trailing spaces   ", " a", "a ", "  a  b   c", "\n\nafter newlines\n", "\tTabbed\r\nCRLF line",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1,000,000 2024-06-01 0x1F",
    "Punctuation: ... !!! ??? (a) [b] {c} \"quoted\" 'single' it's we'll I'M \u2014 \u2013 \u2026",
    "naïve café 日本語のテキスト 🙂 👨\u200d👩\u200d👧 🇫🇷 Straße Привет мир مرحبا नमस्ते 한국어 e\u0301 ＡＢＣ１２３ ﬁ",
    "def f(x):\n    return x**2  # comment\n\tif a==b and c!=d: pass",
    "Special-looking text: <s> </s> <unk> [INST] hi [/INST] <0x41> \u2581 lit",
    "", " ", "\n", "x" * 300,
] + make_docs(30, seed=5)


def _mistral_model() -> Path:
    mc = pytest.importorskip("mistral_common")
    return Path(mc.__file__).parent / "data" / "tokenizer.model.v1"


def _whisper_asset(name: str) -> Path:
    """openai-whisper ships GPT-2's BPE as package data; found without importing whisper (torch, numba)."""
    spec = importlib.util.find_spec("whisper")
    path = Path(spec.submodule_search_locations[0]) / "assets" / name if spec else None
    if path is None or not path.is_file():
        pytest.skip("needs openai-whisper's assets (pip install --no-deps openai-whisper)")
    return path


def _ids(tok, texts):
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


# ----------------------------------------------------------------------------------------------
# SentencePiece and tiktoken files


def test_mistral_sentencepiece_model_matches_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    model = _mistral_model()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    shutil.copyfile(model, tmp_path / "tokenizer.model")  # a directory holding only tokenizer.model
    tok = tokenizers_lib.read_tokenizer(str(tmp_path), "--tokenizer")
    assert [tok.id_to_token(i) for i in range(sp.get_piece_size())] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    expected = sp.encode(SAMPLE)
    assert _ids(tok, SAMPLE) == expected
    assert [tok.decode(ids) for ids in expected] == [sp.decode(ids) for ids in expected]
    info = tokenizers_lib.describe(tok, bos_token="<s>")
    assert (info.eos_token, info.eos_id, info.bos_id, info.size) == ("</s>", 2, 1, 32000)
    assert tok.token_to_id("<0x41>") == sp.piece_to_id("<0x41>")  # byte fallback pieces keep their ids
    # deterministic, and stable through tokenizer.json: a resumed run pins the same sha256
    again = tokenizers_lib.read_tokenizer(str(model), "data.tokenizer")
    assert tokenizers_lib.tokenizer_hash(again) == info.sha256
    from tokenizers import Tokenizer  # noqa: PLC0415

    assert tokenizers_lib.tokenizer_hash(Tokenizer.from_str(tok.to_str())) == info.sha256


def _train_spm(tmp_path: Path, model_type: str, **kw) -> Path:
    spm = pytest.importorskip("sentencepiece")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(make_docs(400, seed=7) + SAMPLE[:10]), model_writer=out,
                                   vocab_size=kw.pop("vocab_size", 600), model_type=model_type, minloglevel=2,
                                   hard_vocab_limit=False, **kw)
    path = tmp_path / f"{model_type}.model"
    path.write_bytes(out.getvalue())
    return path


def test_trained_sentencepiece_bpe_and_unigram_models(tmp_path):
    """The options published models use: byte fallback, user-defined pieces, an NFKC charsmap; and unigram,
    which matches up to score ties (the total score of both segmentations is then the same)."""
    spm = pytest.importorskip("sentencepiece")
    bpe = _train_spm(tmp_path, "bpe", byte_fallback=True, user_defined_symbols=["<tool>", "[REF]"],
                     normalization_rule_name="nmt_nfkc")
    sp = spm.SentencePieceProcessor(model_file=str(bpe))
    tok = tokenizers_lib.read_tokenizer(str(bpe), "--tokenizer")
    texts = SAMPLE + ["call <tool>x[REF] y", "<tool><tool>"]
    assert _ids(tok, texts) == sp.encode(texts)
    assert [tok.decode(ids) for ids in sp.encode(texts)] == [sp.decode(ids) for ids in sp.encode(texts)]

    unigram = _train_spm(tmp_path, "unigram", vocab_size=500)
    sp = spm.SentencePieceProcessor(model_file=str(unigram))
    tok = tokenizers_lib.read_tokenizer(str(unigram), "--tokenizer")
    texts = SAMPLE + make_docs(200, seed=8)
    ours, theirs = _ids(tok, texts), sp.encode(texts)
    differ = [i for i in range(len(texts)) if ours[i] != theirs[i]]
    assert len(differ) <= len(texts) // 50
    for i in differ:
        assert sum(map(sp.get_score, ours[i])) == pytest.approx(sum(map(sp.get_score, theirs[i])), abs=1e-4)
        assert tok.decode(ours[i]) == sp.decode(theirs[i])


def test_gpt2_tiktoken_file_matches_tiktoken():
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe  # noqa: PLC0415
    from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pattern, as tiktoken's gpt2 encoding uses it

    path = _whisper_asset("gpt2.tiktoken")
    ranks = load_tiktoken_bpe(str(path))
    enc = tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256})
    tok = tokenizers_lib.read_tokenizer(str(path), "--tokenizer")
    info = tokenizers_lib.describe(tok)
    assert (info.eos_token, info.eos_id, info.size) == ("<|endoftext|>", 50256, 50257)
    assert _ids(tok, SAMPLE) == enc.encode_ordinary_batch(SAMPLE)
    assert [tok.decode(ids) for ids in _ids(tok, SAMPLE)] == SAMPLE  # byte-level: lossless
    # a special token's literal text is that token (as every tokenizer.json does), i.e. allowed_special="all"
    text = "one<|endoftext|>two"
    assert tok.encode(text).ids == enc.encode(text, allowed_special="all") != enc.encode_ordinary(text)
    assert tokenizers_lib.tokenizer_hash(tokenizers_lib.read_tokenizer(str(path))) == info.sha256


@pytest.mark.parametrize("name", ["CL100K_PATTERN", "LLAMA3_PATTERN"])
def test_llama3_and_cl100k_patterns_split_like_tiktoken(name):
    """Llama 3's and cl100k's pre-tokenization in tokenizers' regex dialect (their files are not shipped by any
    package we install): on GPT-2's ranks, the same ids as tiktoken with the original (possessive) patterns."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe  # noqa: PLC0415

    original = {  # tiktoken_ext/openai_public.py (cl100k_base); Meta's llama3 tokenizer.py
        "CL100K_PATTERN": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        "LLAMA3_PATTERN": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    }[name]
    ranks = load_tiktoken_bpe(str(_whisper_asset("gpt2.tiktoken")))
    enc = tiktoken.Encoding(name="x", pat_str=original, mergeable_ranks=ranks, special_tokens={})
    tok = tokenizers_lib.from_tiktoken(ranks, pattern=getattr(tokenizers_lib, name), special_tokens={})
    texts = SAMPLE + ["I'M here, you'RE there; 1234567 items\r\n\r\n  \n end"]
    assert _ids(tok, texts) == enc.encode_ordinary_batch(texts)


def test_tiktoken_layout_rule():
    llama3 = {bytes([i % 256]) * (1 + i // 256): i for i in range(128000)}  # only the count matters
    pattern, specials = tokenizers_lib.tiktoken_layout(llama3)
    assert pattern == tokenizers_lib.LLAMA3_PATTERN and len(specials) == 256
    assert (specials["<|begin_of_text|>"], specials["<|end_of_text|>"], specials["<|eot_id|>"]) == (128000, 128001, 128009)
    assert sorted(specials.values()) == list(range(128000, 128256))
    assert tokenizers_lib.tiktoken_layout({b"a": 0, b"b": 1})[1] == {"<|endoftext|>": 2}
    assert tokenizers_lib.tiktoken_layout({b"a": 0, b"b": 2})[1] == {"<|endoftext|>": 1}  # the lowest unused id
    pattern, specials = tokenizers_lib.tiktoken_layout({bytes([i % 256]) * (1 + i // 256): i for i in range(100256)})
    assert pattern == tokenizers_lib.CL100K_PATTERN and specials["<|endoftext|>"] == 100257


def test_bad_tokenizer_files_are_one_line_errors(tmp_path):
    model = _mistral_model()
    cases = {
        "random.model": (np.random.default_rng(0).bytes(5000), "is neither a tokenizer.json nor a SentencePiece model"),
        "truncated.model": (model.read_bytes()[:100_000], "is neither a tokenizer.json nor a SentencePiece model"),
        "text.model": (b"hello world\nthis is not a tokenizer\n", "is neither a tokenizer.json nor a SentencePiece model"),
        "bad.tiktoken": (b"IQ== 0\nIg== 1\nnot base64 at all\n", "is neither a tokenizer.json nor a tiktoken BPE file (line 3"),
        "empty.model": (b"", "is neither a tokenizer.json nor a SentencePiece model"),
        "bad.json": (b"{not json", "is not a Hugging Face tokenizers JSON file"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(formats.DataError) as e:
            tokenizers_lib.read_tokenizer(str(tmp_path / name), "--tokenizer")
        text = str(e.value)
        assert text.startswith(f"--tokenizer: {tmp_path / name} ") and message in text and "\n" not in text, text
    word = _train_spm(tmp_path, "word", vocab_size=40)
    with pytest.raises(formats.DataError, match=r"word\.model is a SentencePiece model with model_type=word, which "
                                                r"cannot be converted"):
        tokenizers_lib.read_tokenizer(str(word), "data.tokenizer")
    with pytest.raises(formats.DataError, match=r"does not exist; give a tokenizer.json, a SentencePiece \.model or a "
                                                r"tiktoken file"):
        tokenizers_lib.read_tokenizer(str(tmp_path / "missing"), "--tokenizer")


def test_tokenize_command_and_corpus_with_a_sentencepiece_model(tmp_path):
    """`tokenize --tokenizer tokenizer.model` and data.tokenizer=tokenizer.model: the stored tokenizer.json
    reproduces sentencepiece's ids, the shards hold them, and a rerun pins the same tokenizer."""
    spm = pytest.importorskip("sentencepiece")
    from tokenizers import Tokenizer  # noqa: PLC0415

    model = _mistral_model()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    docs = make_docs(40, seed=11) + ["naïve café 日本語 🙂  two  spaces", "\tTabs\nand lines"]
    files = write_formats(tmp_path / "in", docs)
    out = tmp_path / "tokenized"
    args = ("tokenize", "--inputs", str(files[".jsonl"]), "--out", str(out), "--tokenizer", str(model))
    run_cli(*args, check=True)
    stored = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert _ids(stored, docs) == sp.encode(docs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer_sha256"] == tokenizers_lib.tokenizer_hash(stored) and manifest["eos_id"] == 2
    ids = store_lib.TokenStore([(out, manifest)])[0:manifest["total_tokens"]]
    assert ids.tolist() == [t for d in sp.encode(docs) for t in d + [2]]  # every document, then EOS
    before = (out / "manifest.json").read_text()
    run_cli(*args, check=True)  # the same file converts to the same tokenizer: nothing to redo
    assert (out / "manifest.json").read_text() == before

    cfg = config_lib.base_config()
    cfg.data.train_files = str(files[".parquet"])
    cfg.data.eval_files = str(files[".jsonl.gz"])
    cfg.data.tokenizer = str(model)
    cfg.data.bos_token = "<s>"
    work = tmp_path / "w"
    work.mkdir()
    corpus = corpus_lib.prepare(cfg.data, 32000, work)
    corpus_lib.save_cache(corpus, work)
    assert _ids(Tokenizer.from_file(str(work / "tokenizer.json")), docs) == sp.encode(docs)
    assert corpus.info.bos_id == 1 and corpus.info.eos_id == 2
    again = corpus_lib.prepare(cfg.data, 32000, work)  # a resume: converts again, finds its cache
    assert again.info.sha256 == corpus.info.sha256 == tokenizers_lib.tokenizer_hash(stored)


def test_real_mistral_tokenizer_with_padding_and_eos(tmp_path, mistral_tokenizer):
    info = tokenizers_lib.load_tokenizer(mistral_tokenizer, 32000 + 128, bos_token="<s>")
    assert info.eos_token == "</s>" and info.eos_id == 2 and info.bos_id == 1 and info.size == 32000
    with pytest.raises(formats.DataError, match=r"has 32000 tokens but model.vocab_size=31999"):
        tokenizers_lib.load_tokenizer(mistral_tokenizer, 31999)
    files = write_formats(tmp_path / "in", make_docs(40))
    m = shards.tokenize_files([epath.Path(files[".parquet"])], epath.Path(tmp_path / "t"), info, progress=False)
    store = store_lib.TokenStore([(tmp_path / "t", m)])
    ids = store[0:len(store)]
    assert ids[0] == 1 and (ids == 2).sum() == 40 and (ids == 1).sum() == 40  # BOS ... EOS per document
    first = ids[1:np.argmax(ids == 2)]
    assert info.tokenizer.decode(first.tolist()) == make_docs(40)[0]

@pytest.mark.slow
def test_import_hf_llama_expand_train_with_its_own_tokenizer(tmp_path, mistral_tokenizer):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False,
                                      bos_token_id=1, eos_token_id=2)
    hf_dir = tmp_path / "hf"
    transformers.LlamaForCausalLM(hf_cfg).save_pretrained(str(hf_dir))
    shutil.copyfile(mistral_tokenizer, hf_dir / "tokenizer.json")
    files = write_formats(tmp_path / "text", make_docs(300, seed=31))
    held = write_formats(tmp_path / "held", make_docs(40, seed=32))
    run_cli("import", "--hf", str(hf_dir), "--workdir", str(tmp_path / "imported"), check=True)
    grown = tmp_path / "grown.py"
    grown.write_text(
        "from jaxgrow.config import base_config, model_config\n\n"
        "def get_config():\n"
        "    c = base_config()\n"
        "    c.model = model_config(vocab_size=32000, hidden_size=64, ffn_size=128, num_layers=2, num_heads=4,\n"
        "                           num_kv_heads=2, head_dim=16, tie_embeddings=False, rope_theta=10000.0, norm_eps=1e-6)\n"
        f"    c.data.train_files = {str(files['.jsonl.zst'])!r}\n"
        f"    c.data.eval_files = {str(held['.parquet'])!r}\n"
        "    c.data.bos_token = '<s>'\n"
        "    c.data.seq_len, c.data.batch_size, c.data.eval_batches = 32, 8, 1\n"
        "    c.budget.largest_tokens = 2_560\n"
        "    c.log.progress = False\n"
        "    return c\n")
    run_cli("expand", "--config", str(grown), "--from", str(tmp_path / "imported" / "members" / "model"),
            "--workdir", str(tmp_path / "run"), check=True)
    run_cli("--config", str(grown), "--workdir", str(tmp_path / "run"), check=True)
    assert (tmp_path / "run" / "tokenizer.json").read_text() == mistral_tokenizer.read_text()
    manifest = json.loads(next((tmp_path / "run" / "data").glob("train_*/manifest.json")).read_text())
    assert manifest["eos_token"] == "</s>" and manifest["bos_id"] == 1 and manifest["tokenizer_size"] == 32000
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert np.isfinite(report["members"][-1]["eval_loss"])

def test_import_warns_exactly_when_the_data_rules_would_refuse_its_tokenizer(mistral_tokenizer, caplog):
    """`import` follows data.load_tokenizer's rules: a tokenizer smaller than model.vocab_size (padding) with an
    EOS token is fine; one larger than the model's vocabulary gets a warning that names the rule."""
    from jaxgrow.family import hf_runs  # noqa: PLC0415

    with caplog.at_level("WARNING", logger="jaxgrow"):
        hf_runs.imported_tokenizer(mistral_tokenizer, config_lib.model_config(vocab_size=32768))
    assert not caplog.records  # 32000 tokens padded to 32768, </s> found: trains as is
    with caplog.at_level("WARNING", logger="jaxgrow"):
        hf_runs.imported_tokenizer(mistral_tokenizer, config_lib.model_config(vocab_size=1024))
    assert len(caplog.records) == 1 and "model.vocab_size=1024" in caplog.text
