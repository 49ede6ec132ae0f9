"""Data wing, the readers of raw inputs (formats): a text field that is not a string is refused in every format before
anything is written (never skipped), and a long document is tokenized in pieces, cut before whitespace, so memory is
bounded and the ids are the whole document's (issue #31, cases 1 and 7)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from etils import epath

from conftest import REPO, run_cli
from data_common import make_docs, write_formats
from jaxgrow import config as config_lib
from jaxgrow.data import corpus, formats, shards, tokenizers as tokenizers_lib
from jaxgrow.data.formats import DataError


def _gpt2_tokenizer():
    """GPT-2's BPE as a tiktoken file (openai-whisper ships it as package data; found without importing whisper)."""
    spec = importlib.util.find_spec("whisper")
    path = Path(spec.submodule_search_locations[0]) / "assets" / "gpt2.tiktoken" if spec else None
    if path is None or not path.is_file():
        pytest.skip("needs openai-whisper's assets (pip install --no-deps openai-whisper)")
    return tokenizers_lib.read_tokenizer(str(path), "--tokenizer")


def _varied_text() -> str:
    """Prose, code, numbers, unicode, runs of spaces and blank lines: every kind of whitespace a cut can meet."""
    extra = ["Hello world! The quick brown fox.", "  Leading spaces, trailing   ", "\n\nafter newlines\n",
             "\tTabbed\r\nCRLF line", "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1,000,000", "it's we'll I'M \u2014 \u2026",
             "naïve café 日本語のテキスト 🙂 Straße Привет мир", "def f(x):\n    return x**2  # comment\n\tif a==b: pass",
             "end.\n\n\nNext paragraph", "a  b   c    d", "word.\nword!\n\nword?"]
    parts = make_docs(120, seed=3) + extra * 6
    np.random.default_rng(0).shuffle(parts)
    seps = [" ", "\n", "\n\n", "  ", ". ", "\t", " \n "]
    return "".join(p + seps[i % len(seps)] for i, p in enumerate(parts))


# ----------------------------------------------------------------------------------------------
# Long documents: pieces, cut before whitespace, with the whole document's ids


def test_split_text_cuts_before_whitespace_and_keeps_byte_level_bpe_ids(bpe):
    text = _varied_text()
    tokenizers = [("train_bpe", bpe.tokenizer), ("gpt2.tiktoken", _gpt2_tokenizer())]
    for name, tok in tokenizers:
        whole = tok.encode(text, add_special_tokens=False).ids
        for limit in (40, 97, 1000):
            pieces = list(formats.split_text(text, limit))
            assert "".join(pieces) == text and max(map(len, pieces)) <= limit and len(pieces) > len(text) // limit
            assert all(q[0].isspace() and not p[-1].isspace() for p, q in zip(pieces, pieces[1:])), (name, limit)
            ids = [i for e in tok.encode_batch(pieces, add_special_tokens=False) for i in e.ids]
            assert ids == whole, (name, limit)
    # without whitespace a piece is cut at the limit; a short text is itself
    assert list(formats.split_text("x" * 25, 10)) == ["x" * 10, "x" * 10, "x" * 5]
    assert list(formats.split_text("short", 10)) == ["short"]
    assert list(formats.split_text("", 10)) == [""]


def test_long_documents_stream_in_pieces_with_one_bos_and_eos_each(tmp_path, bpe, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    monkeypatch.setattr(formats, "PIECE_CHARS", 500)
    long = " ".join(make_docs(300, seed=4))  # ~ 30 pieces
    docs = ["a short one.", long, "another short one.", long[:-7]]
    d = tmp_path / "in"
    d.mkdir()
    (d / "one_line.txt").write_text(long)  # a .txt is one document, read in pieces: here one line, no newline
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    pq.write_table(pa.table({"text": docs}), d / "a.parquet")
    tok = Tokenizer.from_str(bpe.tokenizer.to_str())
    tok.add_special_tokens(["<s>"])
    info = tokenizers_lib.describe(tok, bos_token="<s>")
    for name, want in (("one_line.txt", [long]), ("a.jsonl", docs), ("a.parquet", docs)):
        path = epath.Path(d / name)
        pieces = list(formats.iter_documents(path, "text", "--inputs"))
        assert max(len(t) for t, _ in pieces) <= 500 and len(pieces) > 2 * len(want)
        ends = [i for i, (_, e) in enumerate(pieces) if e]
        assert len(ends) == len(want) and ends[-1] == len(pieces) - 1
        assert formats.read_documents([path], "text", "--inputs") == want
        out = epath.Path(tmp_path / f"tok_{name}")
        m = shards.tokenize_files([path], out, info, shard_tokens=1000, progress=False)
        got = np.concatenate([np.fromfile(Path(out) / "shards" / s["name"], "<u2") for s in m["shards"]])
        expected = [i for t in want for i in [info.bos_id, *tok.encode(t, add_special_tokens=False).ids, info.eos_id]]
        assert got.tolist() == expected, name
        assert m["documents"] == len(want)


@pytest.mark.slow  # 8-15 s: a 30 MB file tokenized in a subprocess
def test_single_line_txt_tokenizes_in_bounded_memory(tmp_path, bpe):
    """A 30 MB .txt with no newline: the tokenizing process's peak RSS stays near what one batch of pieces needs
    (~0.4 GB), whatever the file's size. Tokenized whole, as before #31: 2.6 GB peak for this file, 4.5 GB for 50 MB."""
    words = np.array(make_docs(1, seed=5)[0].split())
    rng = np.random.default_rng(0)
    big = tmp_path / "big.txt"
    big.write_text(" ".join(words[rng.integers(0, len(words), 30_000_000 // 7)]))
    assert big.stat().st_size > 25e6
    (tmp_path / "tok.json").write_text(bpe.tokenizer.to_str())
    script = textwrap.dedent(f"""
        import json, sys
        from etils import epath
        from tokenizers import Tokenizer
        from jaxgrow.data import formats, shards, tokenizers
        if len(sys.argv) > 1:
            formats.PIECE_CHARS = int(sys.argv[1])  # 1<<40: the document tokenized whole (how the bound was chosen)
        info = tokenizers.describe(Tokenizer.from_file({str(tmp_path / 'tok.json')!r}))
        m = shards.tokenize_files([epath.Path({str(big)!r})], epath.Path({str(tmp_path / 'out')!r}), info,
                                  progress=False)
        peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) << 10
        print(json.dumps({{"peak": peak, "documents": m["documents"], "tokens": m["total_tokens"]}}))
        """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert run["documents"] == 1 and run["tokens"] > 4_000_000
    assert run["peak"] < 1 << 30, f"{run['peak'] / 2**20:.0f} MB peak RSS"


# ----------------------------------------------------------------------------------------------
# Text fields that are not strings: refused, naming the file and the field, before anything is written


def test_non_string_text_is_refused_in_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path
    columns = {"ints": pa.array([1, 2, 3]), "floats": pa.array([1.5, 2.0, 3.0]), "bools": pa.array([True, False, True]),
               "lists": pa.array([["a"], ["b"], ["c"]]), "binary": pa.array([b"a", b"b", b"c"]),
               "structs": pa.array([{"t": "a"}] * 3), "nulltype": pa.nulls(3)}
    for name, column in columns.items():
        path = epath.Path(d / f"{name}.parquet")
        pq.write_table(pa.table({"text": column, "id": [0, 1, 2]}), str(path))
        kind = pq.read_schema(str(path)).field("text").type  # as stored (a list's item is called 'element')
        for check in (lambda: formats.precheck([path], "text", "--inputs"),  # the footer alone: nothing read
                      lambda: list(formats.iter_documents(path, "text", "--inputs"))):
            with pytest.raises(DataError) as e:
                check()
            assert str(e.value) == (f"--inputs: {path}: column 'text' holds {kind} values; the text field must "
                                    "be strings (data.text_field / --text_field)")
    # strings in any Arrow string type are text
    for name, column in (("large", pa.array(["x y", "z"], pa.large_string())),
                         ("dict", pa.array(["x y", "z"]).dictionary_encode())):
        path = epath.Path(d / f"{name}.parquet")
        pq.write_table(pa.table({"text": column}), str(path))
        formats.precheck([path], "text", "--inputs")
        assert formats.read_documents([path], "text", "--inputs") == ["x y", "z"]
    # null text: refused, as .jsonl refuses {"text": null}; from the footer's statistics when the writer kept them,
    # else by the reader at the row (an empty string is an empty document, skipped, in both formats)
    with_stats, no_stats = epath.Path(d / "nulls.parquet"), epath.Path(d / "nulls_nostats.parquet")
    pq.write_table(pa.table({"text": ["a b", None, "", "c"]}), str(with_stats))
    pq.write_table(pa.table({"text": ["a b", None, "", "c"]}), str(no_stats), write_statistics=False)
    with pytest.raises(DataError, match=r"column 'text' holds 1 null value\(s\) \(first in row group 0\); the text "
                                        "field must be a string in every row"):
        formats.precheck([with_stats], "text", "data.train_files")
    formats.precheck([no_stats], "text", "data.train_files")
    with pytest.raises(DataError, match=rf"^data.train_files: {no_stats}: row 1 \(0-based\) of column 'text' is null"):
        list(formats.iter_documents(no_stats, "text", "data.train_files"))
    # .jsonl: the same values, named by line and JSON type
    for value, kind in ((5, "a number (5)"), (1.5, "a number (1.5)"), (True, "a boolean (true)"), (["a"], "an array"),
                        ({"a": "b"}, "an object"), (None, "null")):
        path = epath.Path(d / "bad.jsonl")
        path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": value}) + "\n")
        with pytest.raises(DataError) as e:
            list(formats.iter_documents(path, "text", "--inputs"))
        assert str(e.value).startswith(f"--inputs: {path}:2: field 'text' holds {kind}, not a string; the text field "
                                       "must be a string in every line (data.text_field / --text_field)")
    # a training run's raw-text inputs: refused when its sources are resolved, before any tokenizer work
    cfg = config_lib.base_config()
    cfg.data.train_files = str(d / "ints.parquet")
    cfg.data.eval_files = str(d / "large.parquet")
    with pytest.raises(DataError, match=rf"^data.train_files: {d / 'ints.parquet'}: column 'text' holds int64 values"):
        corpus.source_specs(cfg.data)


def test_tokenize_refuses_an_int_parquet_among_good_inputs_and_writes_nothing(tmp_path):
    """The issue's case: `tokenize --inputs good.jsonl,ints.parquet` exited 0 with the parquet's documents missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = write_formats(tmp_path / "in", make_docs(40))
    ints = tmp_path / "in" / "ints.parquet"
    pq.write_table(pa.table({"text": list(range(40))}), ints)
    out = tmp_path / "T"
    proc = run_cli("tokenize", "--inputs", f"{files['.jsonl']},{ints}", "--out", str(out), "--vocab_size", "300")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("jaxgrow: error:")]
    assert len(lines) == 1 and f"--inputs: {ints}: column 'text' holds int64 values; the text field must be " \
        "strings (data.text_field / --text_field)" in lines[0], proc.stderr[-2000:]
    assert not out.exists()
