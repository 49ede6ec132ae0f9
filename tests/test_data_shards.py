"""Data wing, formats and shards: streaming tokenize (formats, determinism, resume), token stores and host
slices, bad data inputs (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from etils import epath

from conftest import REPO, run_cli
from data_common import make_docs, shard_bytes, write_formats
from jaxgrow.data import pipeline, shards, store as store_lib, tokenizers as tokenizers_lib


def test_formats_give_identical_tokens(tmp_path, bpe):
    docs = make_docs(120)
    files = write_formats(tmp_path / "in", docs)
    expected = np.concatenate([np.append(e.ids, bpe.eos_id) for e in bpe.tokenizer.encode_batch(docs, add_special_tokens=False)])
    for fmt, path in files.items():
        out = tmp_path / f"out{fmt}"
        m = shards.tokenize_files([epath.Path(path)], epath.Path(out), bpe, progress=False)
        store = store_lib.TokenStore([(out, m)])
        np.testing.assert_array_equal(store[0:len(store)], expected, err_msg=fmt)
        assert m["documents"] == len(docs) and m["dtype"] == "uint16"
        assert m["tokenizer_sha256"] == bpe.sha256 and (out / "tokenizer.json").exists()

def test_tokenize_same_bytes_for_any_workers_and_resumes(tmp_path, bpe):
    inputs = []
    for i in range(3):
        files = write_formats(tmp_path / f"in{i}", make_docs(60 + 20 * i, seed=i))
        inputs += [epath.Path(files[".jsonl.zst"]), epath.Path(files[".parquet"])]
    one, two = epath.Path(tmp_path / "w1"), epath.Path(tmp_path / "w2")
    m1 = shards.tokenize_files(inputs, one, bpe, workers=1, shard_tokens=700, progress=False)
    m2 = shards.tokenize_files(inputs, two, bpe, workers=2, shard_tokens=700, progress=False)
    assert m1 == m2 and len(m1["shards"]) > len(inputs)  # several parts per file
    assert shard_bytes(Path(one)) == shard_bytes(Path(two))
    assert (Path(one) / "manifest.json").read_bytes() == (Path(two) / "manifest.json").read_bytes()
    # A killed run: no manifest, unit 3's record and one of its shards gone. Resume redoes unit 3 only.
    (Path(two) / "manifest.json").unlink()
    (Path(two) / "units" / "00003.json").unlink()
    (Path(two) / "shards" / "00003-0000.bin").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (Path(two) / "shards").iterdir()}
    m3 = shards.tokenize_files(inputs, two, bpe, workers=1, shard_tokens=700, progress=False)
    assert m3 == m1 and shard_bytes(Path(two)) == shard_bytes(Path(one))
    after = {p.name: p.stat().st_mtime_ns for p in (Path(two) / "shards").iterdir()}
    assert {n for n in before if before[n] != after[n]} <= {n for n in before if n.startswith("00003-")}
    assert not [p for p in Path(two).rglob("*.tmp-*")]

def test_tokenize_cli_trains_bpe_from_bounded_sample_and_resumes(tmp_path):
    files = write_formats(tmp_path / "in", make_docs(200))
    out = tmp_path / "tok"
    proc = run_cli("tokenize", "--inputs", f"{files['.jsonl.gz']},{files['.parquet']}", "--out", str(out),
                   "--vocab_size", "400", "--workers", "2", check=True)
    assert "tokens/s" in proc.stdout and "tokenized 2 file(s)" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    tok = tokenizers_lib.read_tokenizer(str(out))
    assert tok.get_vocab_size() == 400 and m["eos_token"] == "<|endoftext|>"
    before = shard_bytes(out)
    proc = run_cli("tokenize", "--inputs", f"{files['.jsonl.gz']},{files['.parquet']}", "--out", str(out), check=True)
    assert shard_bytes(out) == before

def test_token_store_reads_across_shards_and_host_slices_match(tmp_path, bpe):
    files = write_formats(tmp_path / "in", make_docs(150))
    m = shards.tokenize_files([epath.Path(files[".jsonl"])], epath.Path(tmp_path / "t"), bpe, shard_tokens=333,
                                  progress=False)
    store = store_lib.TokenStore([(tmp_path / "t", m)])
    full = np.concatenate([np.fromfile(tmp_path / "t" / "shards" / s["name"], "<u2") for s in m["shards"]]).astype(np.int32)
    assert len(store) == len(full) == m["total_tokens"]
    for a, b in [(0, 5), (330, 340), (100, 1100), (len(full) - 3, len(full))]:
        np.testing.assert_array_equal(store[a:b], full[a:b])
    one = pipeline.train_dataset(store, 16, 8, seed=3)
    halves = [pipeline.train_dataset(store, 16, 8, seed=3, process_index=i, process_count=2) for i in range(2)]
    for k in (0, 1, 57):
        np.testing.assert_array_equal(one[k], np.concatenate([h[k] for h in halves]))
    # windows are real consecutive slices of the corpus
    src = pipeline.WindowSource(store, 16)
    np.testing.assert_array_equal(src[5], full[80:97])
    # worker processes give the same batches as the in-process reader, and restart at a state
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    it0 = pipeline.DeviceIterator(one, sharding, state={"next_index": 4})
    it2 = pipeline.DeviceIterator(one, sharding, state={"next_index": 4}, workers=2)
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(next(it0)), np.asarray(next(it2)))
    assert it2.state() == {"next_index": 7}

def test_bad_inputs_exit_2_one_line_nothing_written(tmp_path, bpe, mistral_tokenizer):
    docs = make_docs(50)
    files = write_formats(tmp_path / "in", docs)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.csv").write_text("a,b\n")
    (bad / "t.jsonl.gz").write_bytes(files[".jsonl.gz"].read_bytes()[:-40])
    (bad / "t.jsonl.zst").write_bytes(files[".jsonl.zst"].read_bytes()[:-40])
    (bad / "nofield.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs}), bad / "nocol.parquet")
    noeos = tmp_path / "noeos.json"
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel()
    t.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>"], show_progress=False))
    t.save(str(noeos))
    # a tokenized dir from the BPE fixture, to be used with another tokenizer
    tok_dir = tmp_path / "tokdir"
    shards.tokenize_files([epath.Path(files[".jsonl"])], epath.Path(tok_dir), bpe, progress=False)
    eval_dir = tmp_path / "evaldir"
    shards.tokenize_files([epath.Path(files[".parquet"])], epath.Path(eval_dir), bpe, progress=False)

    F = ("--config", "configs/tiny.py", "--config.log.progress=False")
    cases = [
        (("tokenize", "--inputs", str(bad / "x.csv"), "--out", "OUT", "--vocab_size", "300"),
         f"--inputs: {bad / 'x.csv'} has suffix '.csv', an unknown format"),
        (("tokenize", "--inputs", str(bad / "t.jsonl.gz"), "--out", "OUT", "--vocab_size", "300"),
         f"--inputs: {bad / 't.jsonl.gz'} is truncated or corrupt"),
        (("tokenize", "--inputs", str(bad / "t.jsonl.zst"), "--out", "OUT", "--tokenizer", str(tok_dir)),
         f"--inputs: {bad / 't.jsonl.zst'} is truncated or corrupt"),
        (("tokenize", "--inputs", str(bad / "nocol.parquet"), "--out", "OUT", "--vocab_size", "300"),
         f"--inputs: {bad / 'nocol.parquet'} has no 'text' column"),
        (("tokenize", "--inputs", str(bad / "nofield.jsonl"), "--out", "OUT", "--tokenizer", str(tok_dir)),
         f"--inputs: {bad / 'nofield.jsonl'}:2 is not a JSON object with a 'text' string"),
        (("tokenize", "--inputs", str(files[".jsonl"]), "--out", "OUT", "--tokenizer", str(noeos)),
         "has none of the EOS tokens"),
        (("tokenize", "--inputs", str(files[".jsonl"]), "--out", "foo://bucket/tok", "--vocab_size", "300"),
         "--out=foo://bucket/tok: unknown URL scheme 'foo://'"),
        ((*F, f"--config.data.train_files={tok_dir}", f"--config.data.eval_files={eval_dir}",
          "--config.model.vocab_size=500"), "has 512 tokens but model.vocab_size=500"),
        ((*F, f"--config.data.train_files={tok_dir}", f"--config.data.eval_files={eval_dir}",
          f"--config.data.tokenizer={mistral_tokenizer}", "--config.model.vocab_size=32000"),
         f"data.train_files: {tok_dir} was tokenized with another tokenizer"),
        ((*F, f"--config.data.train_files={files['.jsonl']}", f"--config.data.eval_files={files['.jsonl']}",
          f"--config.data.tokenizer={noeos}"), "has none of the EOS tokens"),
        ((*F, f"--config.data.train_files={bad / 't.jsonl.gz'}", f"--config.data.eval_files={files['.jsonl']}"),
         f"data.train_files: {bad / 't.jsonl.gz'} is truncated or corrupt"),
        ((*F, f"--config.data.train_files={files['.jsonl']}", f"--config.data.eval_files={files['.jsonl']}",
          "--config.data.eos_token=<|nope|>"), "has no EOS token '<|nope|>' (data.eos_token)"),
        ((*F, "--config.data.train_files=foo://bucket/*.jsonl", f"--config.data.eval_files={files['.jsonl']}"),
         "data.train_files=foo://bucket/*.jsonl: unknown URL scheme 'foo://'"),
        ((*F,), "--workdir=foo://bucket/run: unknown URL scheme 'foo://'"),
    ]
    procs = []
    for i, (args, message) in enumerate(cases):
        workdir = "foo://bucket/run" if args == F else str(tmp_path / f"w{i}")
        args = tuple(str(tmp_path / f"out{i}") if a == "OUT" else a for a in args)
        cli = args if args[0] == "tokenize" else (*args, "--workdir", workdir)
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
        procs.append((cli, message, subprocess.Popen([sys.executable, "-m", "jaxgrow.main", *cli], cwd=REPO, env=env,
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        if len(procs) % 2 == 0:  # two at a time: 2 cores
            for _, _, p in procs[-2:]:
                p.wait()
    for cli, message, p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 2, (cli, stderr[-2000:])
        lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("jaxgrow: error:")]
        assert len(lines) == 1 and message in lines[0], (cli, stderr[-2000:])
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("out", "w")))
    assert written == [], written
    assert not (REPO / "foo:").exists()


def test_out_of_range_token_ids_are_refused_naming_the_shard(tmp_path, bpe, monkeypatch):
    """A shard of the right size holding ids >= model.vocab_size failed as a non-finite loss at step 1, naming no file
    (issue #31, case 10): a run now refuses it when it opens the directory, naming the shard, the id and the vocab."""
    import shutil

    from jaxgrow import config as config_lib
    from jaxgrow.data import corpus
    from jaxgrow.data.formats import DataError

    files = write_formats(tmp_path / "in", make_docs(150))
    good, bad = tmp_path / "good", tmp_path / "bad"
    m = shards.tokenize_files([epath.Path(files[".jsonl"])], epath.Path(good), bpe, shard_tokens=300, progress=False)
    assert len(m["shards"]) > 4
    shutil.copytree(good, bad)

    def plant(name: str, index: int, value: int = 600) -> None:
        ids = np.fromfile(bad / "shards" / name, "<u2")
        ids[index] = value
        ids.tofile(bad / "shards" / name)

    plant("00000-0002.bin", 150)
    shards.check_shard_sizes(good, m, "data.train_files", 512)
    shards.check_shard_sizes(bad, m, "data.train_files", 601)  # below a larger (padded) vocab: fine
    message = f"data.train_files: {bad / 'shards' / '00000-0002.bin'} holds token id 600 >= model.vocab_size=512; it " \
              "was tokenized with another tokenizer"
    with pytest.raises(DataError) as e:
        shards.check_shard_sizes(bad, m, "data.train_files", 512)
    assert str(e.value).startswith(message)
    # a run opening it: refused when its data is prepared, before anything is written
    cfg = config_lib.base_config()
    cfg.data.train_files, cfg.data.eval_files = str(bad), str(good)
    with pytest.raises(DataError) as e:
        corpus.prepare(cfg.data, 512, None)
    assert str(e.value).startswith(message)
    corpus.prepare(cfg.data, 601, None)
    # beyond ID_SCAN_TOKENS a deterministic sample of every shard is read: evenly spaced blocks from its first token
    # to its last (an id planted between blocks is missed, by design)
    monkeypatch.setattr(shards, "ID_SCAN_TOKENS", 8 * len(m["shards"]))
    monkeypatch.setattr(shards, "ID_SAMPLE_TOKENS", 4)
    shutil.rmtree(bad)
    shutil.copytree(good, bad)
    plant("00000-0001.bin", 120)  # not sampled: blocks [0, 4) and [296, 300)
    assert shards._id_ranges(300, 8) == [(0, 4), (296, 4)]
    shards.check_shard_sizes(bad, m, "data.train_files", 512)
    last = m["shards"][-1]
    plant(last["name"], last["tokens"] - 1, 513)
    with pytest.raises(DataError, match=f"{last['name']} holds token id 513 >= model.vocab_size=512"):
        shards.check_shard_sizes(bad, m, "data.train_files", 512)


def test_out_of_range_token_ids_in_a_bucket_are_refused(tmp_path, bpe, s3_emulator, monkeypatch):
    """The same check on a bucket: ranged reads of exactly the checked bytes (fsspec cat_ranges), in batches."""
    import s3fs

    from jaxgrow.data.formats import DataError

    files = write_formats(tmp_path / "in", make_docs(150))
    local = tmp_path / "tok"
    m = shards.tokenize_files([epath.Path(files[".jsonl"])], epath.Path(local), bpe, shard_tokens=300, progress=False)
    ids = np.fromfile(local / "shards" / "00000-0003.bin", "<u2")
    ids[-1] = 777
    ids.tofile(local / "shards" / "00000-0003.bin")
    s3fs.S3FileSystem().put(str(local / "shards"), "s3://jaxgrow-test/tok/", recursive=True)
    remote = epath.Path("s3://jaxgrow-test/tok")
    monkeypatch.setattr(shards, "_ID_BATCH_BYTES", 1000)  # several cat_ranges calls
    shards.check_shard_sizes(remote, m, "data.train_files", 778)
    with pytest.raises(DataError, match=r"^data.train_files: s3://jaxgrow-test/tok/shards/00000-0003.bin holds token "
                                        r"id 777 >= model.vocab_size=512"):
        shards.check_shard_sizes(remote, m, "data.train_files", 512)
    monkeypatch.setattr(shards, "ID_SCAN_TOKENS", 8 * len(m["shards"]))  # sampled: the last block holds it
    monkeypatch.setattr(shards, "ID_SAMPLE_TOKENS", 4)
    with pytest.raises(DataError, match="00000-0003.bin holds token id 777"):
        shards.check_shard_sizes(remote, m, "data.train_files", 512)
