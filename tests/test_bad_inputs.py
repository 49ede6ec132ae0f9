"""The bad-input catalogue: every subcommand, every kind of bad input a demanding operator tried (and more). Each
row must exit with code 2, print at most 3 lines and no traceback, and leave the workdir, the output directory and
the current directory exactly as they were (hashed before and after). A new bad input gets a row."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from etils import epath

from conftest import REPO, run_cli
from data_common import make_docs, write_formats
from jaxgrow.data import shards


pytestmark = pytest.mark.slow  # ~90 CLI processes (a few on a trained tiny family); CI runs them

TINY = str(REPO / "configs" / "tiny.py")
FAMILY = str(REPO / "configs" / "family_tiny.py")


def tree_hash(*roots: Path) -> str:
    """A hash of every file's path, size, bytes and mode under the roots (directories included)."""
    h = hashlib.sha256()
    for root in roots:
        if not root.exists():
            h.update(f"absent:{root}".encode())
            continue
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            h.update(str(p.relative_to(root.parent)).encode())
            if p.is_file():
                h.update(p.read_bytes())
            h.update(oct(p.stat().st_mode).encode())
    return h.hexdigest()


def config_file(d: Path, name: str, body: str) -> str:
    path = d / f"{name}.py"
    path.write_text(body)
    return str(path)


def member_config(d: Path, name: str, member: str) -> str:
    return config_file(d, name, "from jaxgrow.config import add_member, base_config, model_config\n\n"
                                "def get_config():\n    c = base_config()\n"
                                "    c.model = model_config(vocab_size=512, head_dim=16)\n"
                                f"    add_member(c, {member!r}, hidden_size=32)\n"
                                "    return c\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_family, bpe):
    """Every input the rows need: bad config files, bad data, bad tokenized dirs, broken workdirs, HF dirs."""
    d = tmp_path_factory.mktemp("bad_world")
    w = {"d": d}
    # config files
    w["syntax"] = config_file(d, "syntax", "def get_config(:\n")
    w["dict"] = config_file(d, "dict", "def get_config():\n    return {'mode': 'progressive'}\n")
    w["raises"] = config_file(d, "raises", "def get_config():\n    raise RuntimeError('boom')\n")
    w["noget"] = config_file(d, "noget", "X = 1\n")
    w["keyless"] = config_file(d, "keyless", "import ml_collections\n\ndef get_config():\n"
                                             "    return ml_collections.ConfigDict({'seed': 0})\n")
    for key, name in (("abs", "/abs/path"), ("nested", "a/b"), ("up", "../x"), ("dot", "."), ("space", "a b")):
        w[f"member_{key}"] = member_config(d, f"member_{key}", name)
    w["shrink"] = config_file(d, "shrink", "from jaxgrow.config import add_member, base_config, model_config\n\n"
                                           "def get_config():\n    c = base_config()\n"
                                           "    c.model = model_config(vocab_size=512, head_dim=16)\n"
                                           "    add_member(c, 'big', hidden_size=64, num_layers=2)\n"
                                           "    add_member(c, 'small', hidden_size=32, num_layers=2)\n    return c\n")
    # data
    docs = make_docs(200)
    files = write_formats(d / "in", docs)
    w["jsonl"] = str(files[".jsonl"])
    (d / "x.csv").write_text("a,b\n")
    (d / "empty.txt").write_text("")
    (d / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (d / "surrogate.jsonl").write_text('{"text": "fine"}\n{"text": "\\ud800 lone"}\n')
    (d / "nofield.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    (d / "trunc.jsonl.gz").write_bytes(files[".jsonl.gz"].read_bytes()[:-40])
    (d / "tasks_latin1.jsonl").write_bytes('{"context": "caf\xe9", "choices": ["a", "b"], "answer": 0}\n'.encode("latin-1"))
    # tokenized dirs: good, truncated shard, edited dtype, invalid manifest, manifest without a key
    good = d / "tok_good"
    shards.tokenize_files([epath.Path(files[".jsonl"])], epath.Path(good), bpe, progress=False, shard_tokens=500)
    held = d / "tok_held"
    shards.tokenize_files([epath.Path(files[".parquet"])], epath.Path(held), bpe, progress=False)
    w["tok_good"], w["tok_held"] = str(good), str(held)
    for name, damage in (("tok_trunc", "truncate"), ("tok_dtype", "dtype"), ("tok_badjson", "json"),
                         ("tok_nokey", "key")):
        t = d / name
        shutil.copytree(good, t)
        manifest = json.loads((t / "manifest.json").read_text())
        if damage == "truncate":
            shard = t / "shards" / manifest["shards"][1]["name"]
            shard.write_bytes(shard.read_bytes()[:-10])
        elif damage == "dtype":
            manifest["dtype"] = "uint32"
            (t / "manifest.json").write_text(json.dumps(manifest))
        elif damage == "json":
            (t / "manifest.json").write_text('{"format": "jaxgrow.tokens/1", "dtype":')
        else:
            del manifest["shards"]
            (t / "manifest.json").write_text(json.dumps(manifest))
        w[name] = str(t)
    (d / "corrupt_tokenizer.json").write_text("{not json")
    w["corrupt_tokenizer"] = str(d / "corrupt_tokenizer.json")
    w["tokenizer"] = str(good / "tokenizer.json")
    # tokenize outputs: a file, and a dir with a corrupt manifest
    (d / "out_file").write_text("x")
    (d / "out_corrupt").mkdir()
    (d / "out_corrupt" / "manifest.json").write_text("{")
    # workdirs: a file, read-only, interrupted expand, locked by a live process, drifted, damaged configs
    (d / "wd_file").write_text("x")
    ro = d / "ro"
    ro.mkdir()
    w["ro"] = ro
    for name in ("wd_expand", "wd_locked", "wd_drift", "wd_badjson", "wd_keyless", "wd_ro"):
        (d / name).mkdir()
    (d / "wd_expand" / "lineage.json").write_text(json.dumps(
        {"complete": False, "key": "k", "parent": {"checkpoint": "W/members/small"},
         "command": "jaxgrow expand --config big.py --from W/members/small --workdir X"}))
    (d / "wd_expand" / "config.json").write_text((tiny_family / "config.json").read_text())
    (d / "wd_locked" / "lock.json").write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "started": 0,
                                                          "heartbeat": 0, "token": "t"}))
    (d / "wd_drift" / "config.json").write_text((tiny_family / "config.json").read_text().replace(
        '"seed": 0', '"seed": 7'))
    (d / "wd_badjson" / "config.json").write_text('{"mode": ')
    (d / "wd_keyless" / "config.json").write_text("{}")
    # a copy of the trained tiny family: with a damaged tokenizer, and read-only
    for name in ("fam_badtok", "fam_ro"):
        shutil.copytree(tiny_family, d / name, ignore=shutil.ignore_patterns("lock.json"))
    (d / "fam_badtok" / "tokenizer.json").write_text("{broken")
    w["fam"] = tiny_family
    # HF checkpoints: int64 weights, NaN weights (from a real export of the tiny family's smallest member)
    hf_ok = d / "hf_ok"
    proc = run_cli("export", "--workdir", str(tiny_family), "--member", "small", "--out", str(hf_ok))
    assert proc.returncode == 0, proc.stderr[-2000:]
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(hf_ok / "model.safetensors"))
    for name, change in (("hf_int", lambda t: t.astype(np.int64)), ("hf_nan", lambda t: np.full_like(t, np.nan))):
        out = d / name
        shutil.copytree(hf_ok, out)
        bad = dict(tensors)
        key = "model.layers.0.mlp.up_proj.weight"
        bad[key] = change(bad[key])
        save_file(bad, str(out / "model.safetensors"), metadata={"format": "pt"})
    (d / "hf_noconfig").mkdir()
    # issue 31 and 29: another tokenizer of the family's size (C), data tokenized with it, runs whose tokenizer or
    # records were replaced or damaged after training, configs of the wrong types
    from jaxgrow.data import tokenizers as tokenizers_lib  # noqa: PLC0415

    other = tokenizers_lib.describe(tokenizers_lib.train_bpe(make_docs(300, seed=21), 2048))
    tok_c = d / "tok_other"
    shards.tokenize_files([epath.Path(files[".jsonl"])], epath.Path(tok_c), other, progress=False)
    w["tok_other"] = str(tok_c)
    (d / "other_tokenizer.json").write_text(other.tokenizer.to_str())
    for name in ("fam_swaptok", "fam_emptycfg", "fam_otherdata"):
        shutil.copytree(tiny_family, d / name, ignore=shutil.ignore_patterns("lock.json"))
    (d / "fam_swaptok" / "tokenizer.json").write_text(other.tokenizer.to_str())  # replaced between runs
    (d / "fam_emptycfg" / "config.json").write_text("")
    header = ("import ml_collections\nfrom jaxgrow.config import add_member, base_config, model_config\n\n"
              "def get_config():\n    c = base_config()\n    c.model = model_config(vocab_size=512, head_dim=16)\n"
              "    add_member(c, 'small', hidden_size=32, num_layers=2)\n")
    for name, overrides in (("type_str", "hidden_size='64'"), ("type_float", "hidden_size=64.0"),
                            ("type_list", "num_layers=[2]")):
        w[name] = config_file(d, name, header + f"    add_member(c, 'big', {overrides})\n    return c\n")
    w["type_budget_list"] = config_file(d, "type_budget_list", header + "    c.budget = ml_collections.ConfigDict("
                                        "dict(c.budget.to_dict(), largest_tokens=[400000]))\n    return c\n")
    w["returns_list"] = config_file(d, "returns_list", "def get_config():\n    return [1, 2]\n")
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    pq.write_table(pa.table({"text": list(range(50))}), d / "ints.parquet")
    pq.write_table(pa.table({"text": ["a b", None, "c"]}), d / "nulls.parquet")
    (d / "ints.jsonl").write_text('{"text": "fine"}\n{"text": 7}\n')
    t = d / "tok_ids"  # right-sized shard holding an id >= model.vocab_size
    shutil.copytree(good, t)
    shard = t / "shards" / json.loads((t / "manifest.json").read_text())["shards"][1]["name"]
    ids = np.fromfile(shard, "<u2")
    ids[7] = 600
    ids.tofile(shard)
    w["tok_ids"] = str(t)
    return w


def rows(w: dict) -> list[tuple[str, tuple, str, list]]:
    """(id, command line, words the one error line must contain, paths that must stay unchanged, devices)."""
    d, fam = w["d"], str(w["fam"])
    new = str(d / "new_wd")  # never created by a bad-input row
    out = str(d / "new_out")
    F = ("--config", TINY, "--config.log.progress=False")
    data = ("--config.data.train_files=" + w["tok_good"], "--config.data.eval_files=" + w["tok_held"],
            "--config.model.vocab_size=512", "--config.data.seq_len=32", "--config.data.batch_size=4")
    raw = lambda f: ("--config.data.train_files=" + f, "--config.data.eval_files=" + w["jsonl"],  # noqa: E731
                     "--config.model.vocab_size=512", "--config.data.seq_len=32", "--config.data.batch_size=4",
                     "--config.data.tokenizer=" + w["tokenizer"])
    R = []

    def row(name, args, words, *keep, devices=1):
        R.append((name, tuple(args), words, [Path(k) for k in keep] or [Path(new)], devices))

    # --- train: the command line and the config file
    row("workdir_empty", (*F, "--workdir", ""), "--workdir='' is empty")
    row("workdir_blank", (*F, "--workdir", "   "), "is empty")
    row("workdir_spaces_around", (*F, "--workdir", f" {new} "), "leading or trailing whitespace")
    row("no_config", ("--workdir", new), "--config is required")
    row("config_missing", ("--config", str(d / "nope.py"), "--workdir", new), "cannot load it")
    row("config_syntax", ("--config", w["syntax"], "--workdir", new), "does not compile")
    row("config_dict", ("--config", w["dict"], "--workdir", new), "returned a dict")
    row("config_raises", ("--config", w["raises"], "--workdir", new), "get_config() raised RuntimeError: boom")
    row("config_no_get_config", ("--config", w["noget"], "--workdir", new), "defines no get_config()")
    row("config_keyless", ("--config", w["keyless"], "--workdir", new), "the config lacks")
    row("unknown_key", (*F, "--workdir", new, "--config.budget_scal=1"), "did you mean 'budget_scale'")
    row("unknown_nested_key", (*F, "--workdir", new, "--config.model.hiden_size=1"), "did you mean 'hidden_size'")
    row("budget_scale_inf", (*F, "--workdir", new, "--config.budget_scale=inf"), "budget_scale=inf must be a finite")
    row("budget_scale_zero", (*F, "--workdir", new, "--config.budget_scale=0"), "budget_scale=0.0 must be > 0")
    row("lr_peak_nan", (*F, "--workdir", new, "--config.lr.peak=nan"), "lr.peak=nan must be a finite")
    row("vocab_over_int32", (*F, "--workdir", new, "--config.model.vocab_size=3000000000"), "must be < 2**31")
    row("vocab_float", (*F, "--workdir", new, "--config.model.vocab_size=1e12"), "vocab_size")
    row("member_absolute", ("--config", w["member_abs"], "--workdir", new), "'/abs/path' is not a valid name")
    row("member_nested", ("--config", w["member_nested"], "--workdir", new), "'a/b' is not a valid name")
    row("member_parent", ("--config", w["member_up"], "--workdir", new), "'../x' is not a valid name")
    row("member_dot", ("--config", w["member_dot"], "--workdir", new), "'.' is not a valid name")
    row("member_space", ("--config", w["member_space"], "--workdir", new), "'a b' is not a valid name")
    row("family_shrinks", ("--config", w["shrink"], "--workdir", new), "shrinks from members.big.hidden_size")
    row("seq_len_over_context", (*F, "--workdir", new, "--config.data.seq_len=65536"), "RoPE-usable context")
    row("grad_accum_not_dividing", (*F, "--workdir", new, "--config.optimizer.grad_accum_steps=3"),
        "must be divisible by optimizer.grad_accum_steps=3")
    row("mode_bogus", (*F, "--workdir", new, "--config.mode=bogus"), "mode='bogus' must be")
    row("lr_rule_bogus", (*F, "--workdir", new, "--config.lr.rule=magic"), "lr.rule='magic' must be one of")
    row("lr_table_bad", (*F, "--workdir", new, "--config.lr.rule=table", "--config.lr.table=1e6:abc"),
        "lr.table='1e6:abc'")
    row("expansion_bogus", ("--config", FAMILY, "--workdir", new, "--config.expansion.method=magic"),
        "expansion.method='magic'")
    row("mesh_too_big", (*F, "--workdir", new, "--config.mesh.fsdp=4"), "mesh")
    row("flag_not_for_train", (*F, "--workdir", new, "--out", out), "--out does not apply to `train`")
    row("positional_arg", (*F, "--workdir", new, "extra"), "unexpected arguments")
    # --- train: the workdir
    row("workdir_is_file", (*F, "--workdir", str(d / "wd_file")), "exists and is not a directory", d / "wd_file")
    row("workdir_read_only", (*F, "--workdir", str(w["ro"] / "run")), "is not writable", w["ro"])
    row("workdir_unknown_scheme", (*F, "--workdir", "foo://bucket/run"), "unknown URL scheme")
    row("workdir_upper_scheme", (*F, "--workdir", "GS://bucket/run"), "lower case")
    row("workdir_interrupted_expand", ("--config", FAMILY, "--workdir", str(d / "wd_expand"),
                                       "--config.log.progress=False"), "interrupted expand", d / "wd_expand")
    row("workdir_locked", ("--config", FAMILY, "--workdir", str(d / "wd_locked")), "is in use by pid 1",
        d / "wd_locked")
    row("workdir_drift", ("--config", FAMILY, "--workdir", str(d / "wd_drift")), "differing keys: seed",
        d / "wd_drift")
    # --- train: data
    row("train_files_no_match", (*F, "--workdir", new, *raw(str(d / "nothing*.jsonl"))), "no file matches")
    row("train_files_csv", (*F, "--workdir", new, *raw(str(d / "x.csv"))), "an unknown format")
    row("train_files_empty", (*F, "--workdir", new, *raw(str(d / "empty.txt"))), "is empty")
    row("train_files_binary", (*F, "--workdir", new, *raw(str(d / "binary.txt"))), "is binary")
    row("train_files_surrogate", (*F, "--workdir", new, *raw(str(d / "surrogate.jsonl"))), "lone UTF-16 surrogate")
    row("train_files_no_field", (*F, "--workdir", new, *raw(str(d / "nofield.jsonl"))), "is not a JSON object")
    row("train_files_truncated_gz", (*F, "--workdir", new, *raw(str(d / "trunc.jsonl.gz"))), "truncated or corrupt")
    row("eval_files_missing", (*F, "--workdir", new, "--config.data.train_files=" + w["jsonl"]),
        "data.eval_files is empty")
    for name, words in (("tok_trunc", "bytes, the manifest says"), ("tok_dtype", "bytes, the manifest says"),
                        ("tok_badjson", "is not valid JSON"), ("tok_nokey", "lacks ['shards']")):
        row(f"tokenized_{name[4:]}", (*F, "--workdir", new, *data[1:], "--config.data.train_files=" + w[name]), words)
    row("tokenizer_missing", (*F, "--workdir", new, *data, "--config.data.tokenizer=" + str(d / "nope.json")),
        "does not exist")
    row("tokenizer_corrupt", (*F, "--workdir", new, *data, "--config.data.tokenizer=" + w["corrupt_tokenizer"]),
        "tokenizer")
    row("eos_missing", (*F, "--workdir", new, *data, "--config.data.eos_token=<nope>"), "has no EOS token '<nope>'")
    row("vocab_too_small", (*F, "--workdir", new, *data[:2], "--config.model.vocab_size=100",
                            "--config.data.seq_len=32", "--config.data.batch_size=4"), "model.vocab_size=100")
    row("batch_too_big_for_data", (*F, "--workdir", new, *data[:3], "--config.data.seq_len=32",
                                   "--config.data.batch_size=100000"), "cannot fill one batch")
    # --- expand
    row("expand_no_from", ("expand", "--config", FAMILY, "--workdir", new), "--from is required")
    row("expand_from_empty", ("expand", "--config", FAMILY, "--from", str(d), "--workdir", new), "holds no checkpoint")
    row("expand_into_a_run", ("expand", "--config", FAMILY, "--from", f"{fam}/members/small", "--workdir",
                              str(d / "wd_drift")), "already holds a run", d / "wd_drift")
    row("expand_shrinks", ("expand", "--config", TINY, "--from", f"{fam}/members/large", "--workdir", new,
                           "--config.model.vocab_size=2048", "--config.model.hidden_size=64"), "shrinks")
    # --- plan
    row("plan_devices_negative", ("plan", "--config", FAMILY, "--devices", "-1"), "--devices=-1 must be >= 0")
    row("plan_batch_not_dividing", ("plan", "--config", FAMILY, "--devices", "3", "--config.mesh.fsdp=3"),
        "must be divisible by mesh data*fsdp=3", devices=3)
    row("plan_mesh_product", ("plan", "--config", FAMILY, "--devices", "8", "--config.mesh.fsdp=2",
                              "--config.mesh.tensor=2"), "mesh")
    row("plan_flag_not_for_plan", ("plan", "--config", FAMILY, "--workdir", new), "--workdir does not apply")
    # --- evaluate
    row("evaluate_no_workdir", ("evaluate", "--suite", "core"), "--workdir is required")
    row("evaluate_no_run", ("evaluate", "--workdir", new, "--suite", "core"), "holds no run")
    row("evaluate_bad_config_json", ("evaluate", "--workdir", str(d / "wd_badjson"), "--suite", "piqa"),
        "is not valid JSON", d / "wd_badjson")
    row("evaluate_keyless_config_json", ("evaluate", "--workdir", str(d / "wd_keyless"), "--suite", "piqa"),
        "lacks", d / "wd_keyless")
    row("evaluate_suite_bogus", ("evaluate", "--workdir", fam, "--suite", "bogus"), "unknown suite or task 'bogus'",
        w["fam"])
    row("evaluate_limit_zero", ("evaluate", "--workdir", fam, "--suite", "piqa", "--limit", "0"), "limit=0 must be > 0",
        w["fam"])
    row("evaluate_tasks_not_utf8", ("evaluate", "--workdir", fam, "--tasks", str(d / "tasks_latin1.jsonl")),
        "is not UTF-8", w["fam"])
    row("evaluate_tasks_missing", ("evaluate", "--workdir", fam, "--tasks", str(d / "nope.jsonl")), "does not exist",
        w["fam"])
    row("evaluate_gamma_zero", ("evaluate", "--workdir", fam, "--speculative", "--gamma", "0"), "--gamma=0 must be",
        w["fam"])
    row("evaluate_suite_and_tasks", ("evaluate", "--workdir", fam, "--suite", "piqa", "--tasks",
                                     str(d / "tasks_latin1.jsonl")), "not both", w["fam"])
    row("evaluate_read_only", ("evaluate", "--workdir", str(d / "fam_ro"), "--tasks",
                               str(REPO / "tasks" / "shakespeare_continuation.jsonl")), "is not writable",
        d / "fam_ro")
    row("evaluate_member_unknown", ("evaluate", "--workdir", fam, "--suite", "piqa", "--member", "nope"),
        "is not a member", w["fam"])
    # --- export
    row("export_no_out", ("export", "--workdir", fam), "--out is required", w["fam"])
    row("export_out_is_file", ("export", "--workdir", fam, "--out", str(d / "wd_file")), "is not a directory",
        w["fam"], d / "wd_file")
    row("export_member_unknown", ("export", "--workdir", fam, "--member", "nope", "--out", out), "is not a member",
        w["fam"], Path(out))
    row("export_dtype_bogus", ("export", "--workdir", fam, "--out", out, "--export_dtype", "float16"),
        "export_dtype", w["fam"], Path(out))
    row("export_positions_negative", ("export", "--workdir", fam, "--out", out, "--max_position_embeddings", "-1"),
        "must be >= 1", w["fam"], Path(out))
    row("export_bad_tokenizer", ("export", "--workdir", str(d / "fam_badtok"), "--out", out), "tokenizer",
        d / "fam_badtok", Path(out))
    row("export_bad_config_json", ("export", "--workdir", str(d / "wd_badjson"), "--out", out), "is not valid JSON",
        d / "wd_badjson", Path(out))
    row("export_unknown_scheme", ("export", "--workdir", fam, "--out", "foo://b/x"), "unknown URL scheme", w["fam"])
    # --- import
    row("import_no_hf", ("import", "--workdir", new), "--hf DIR is required")
    row("import_missing_dir", ("import", "--hf", str(d / "nope"), "--workdir", new), "is not a directory")
    row("import_no_config", ("import", "--hf", str(d / "hf_noconfig"), "--workdir", new), "has no config.json")
    row("import_int64", ("import", "--hf", str(d / "hf_int"), "--workdir", new), "has dtype int64")
    row("import_nan", ("import", "--hf", str(d / "hf_nan"), "--workdir", new), "non-finite values")
    row("import_into_a_run", ("import", "--hf", str(d / "hf_int"), "--workdir", fam), "dtype int64", w["fam"])
    # --- sample
    row("sample_prompt_not_utf8", ("sample", "--workdir", fam, "--prompt", b"\xff\xfe".decode("utf-8", "surrogateescape")),
        "is not valid UTF-8", w["fam"])
    row("sample_temperature_negative", ("sample", "--workdir", fam, "--temperature", "-1"), "temperature", w["fam"])
    row("sample_member_unknown", ("sample", "--workdir", fam, "--member", "nope"), "is not a member", w["fam"])
    row("sample_bad_config_json", ("sample", "--workdir", str(d / "wd_badjson")), "is not valid JSON",
        d / "wd_badjson")
    row("sample_bad_tokenizer", ("sample", "--workdir", str(d / "fam_badtok"), "--member", "small"), "tokenizer",
        d / "fam_badtok")
    row("sample_draft_without_member", ("sample", "--workdir", fam, "--draft", "small"), "--draft needs --member",
        w["fam"])
    row("sample_draft_larger", ("sample", "--workdir", fam, "--member", "small", "--draft", "large"),
        "must be the smaller model", w["fam"])
    # --- tokenize
    row("tokenize_no_inputs", ("tokenize", "--out", out), "--inputs is required", Path(out))
    row("tokenize_no_out", ("tokenize", "--inputs", w["jsonl"]), "--out is required")
    row("tokenize_out_is_file", ("tokenize", "--inputs", w["jsonl"], "--out", str(d / "out_file"), "--vocab_size", "300"),
        "exists and is not a directory", d / "out_file")
    row("tokenize_out_corrupt_manifest", ("tokenize", "--inputs", w["jsonl"], "--out", str(d / "out_corrupt"),
                                          "--tokenizer", w["tokenizer"]), "is not valid JSON", d / "out_corrupt")
    row("tokenize_workers_zero", ("tokenize", "--inputs", w["jsonl"], "--out", out, "--workers", "0"),
        "--workers=0 must be >= 1", Path(out))
    row("tokenize_surrogate", ("tokenize", "--inputs", str(d / "surrogate.jsonl"), "--out", out, "--tokenizer",
                               w["tokenizer"]), "lone UTF-16 surrogate", Path(out))
    row("tokenize_tokenizer_corrupt", ("tokenize", "--inputs", w["jsonl"], "--out", out, "--tokenizer",
                                       w["corrupt_tokenizer"]), "tokenizer", Path(out))
    row("tokenize_vocab_too_small", ("tokenize", "--inputs", w["jsonl"], "--out", out, "--vocab_size", "10"),
        "too small for a byte-level BPE", Path(out))
    row("tokenize_neither_tokenizer_nor_vocab", ("tokenize", "--inputs", w["jsonl"], "--out", out),
        "give --tokenizer PATH", Path(out))
    row("tokenize_unknown_scheme", ("tokenize", "--inputs", w["jsonl"], "--out", "foo://b/t", "--vocab_size", "300"),
        "unknown URL scheme")
    row("tokenize_out_locked", ("tokenize", "--inputs", w["jsonl"], "--out", str(d / "wd_locked"), "--vocab_size",
                                "300"), "is in use by pid 1", d / "wd_locked")
    row("tokenize_out_holds_its_input", ("tokenize", "--inputs", w["jsonl"], "--out", str(Path(w["jsonl"]).parent),
                                         "--vocab_size", "300"), "is, is inside or contains the input",
        Path(w["jsonl"]).parent)
    row("tokenize_parquet_int_text", ("tokenize", "--inputs", f"{w['jsonl']},{d / 'ints.parquet'}", "--out", out,
                                      "--vocab_size", "300"),
        "column 'text' holds int64 values; the text field must be strings", Path(out))
    row("tokenize_parquet_null_text", ("tokenize", "--inputs", str(d / "nulls.parquet"), "--out", out,
                                       "--vocab_size", "300"), "column 'text' holds 1 null value(s)", Path(out))
    row("tokenize_jsonl_int_text", ("tokenize", "--inputs", str(d / "ints.jsonl"), "--out", out, "--tokenizer",
                                    w["tokenizer"]), "ints.jsonl:2: field 'text' holds a number (7), not a string",
        Path(out))
    row("train_files_parquet_int_text", (*F, "--workdir", new, *raw(str(d / "ints.parquet"))),
        "ints.parquet: column 'text' holds int64 values")
    row("tokenized_ids_over_vocab", (*F, "--workdir", new, *data[1:], "--config.data.train_files=" + w["tok_ids"]),
        "holds token id 600 >= model.vocab_size=512")
    _issue_29_rows(row, w, new, out)
    _issue_31_rows(row, w, new, out)
    return R


def _issue_29_rows(row, w, new, out):
    """Families both ways: prune and distillation inputs."""
    d, fam = w["d"], str(w["fam"])
    F = ("--config", FAMILY, "--config.log.progress=False", "--config.budget_scale=0.15")
    row("prune_no_from", ("prune", "--config", FAMILY, "--workdir", new), "--from is required")
    row("prune_from_empty", ("prune", "--config", FAMILY, "--from", str(d), "--workdir", new), "holds no checkpoint")
    row("prune_grows", ("prune", "--config", TINY, "--from", f"{fam}/members/small", "--workdir", new,
                        "--config.model.vocab_size=2048", "--config.model.head_dim=32", "--config.model.hidden_size=128"),
        "hidden_size=128 grows from 64; pruning only shrinks")
    row("prune_into_its_parent", ("prune", "--config", FAMILY, "--from", f"{fam}/members/large", "--workdir",
                                  f"{fam}/pruned"), "is, is inside or contains the run of --from", w["fam"])
    row("prune_family_grows", (*F, "--workdir", new, "--config.transitions=small=scratch; medium=grow(small); "
                               "large=prune(medium)"), "grows from 96; pruning only shrinks")
    row("teacher_unknown", (*F, "--workdir", new, "--config.distill.teacher=huge"), "distill.teacher='huge' is not")
    row("teacher_trained_last", (*F, "--workdir", new, "--config.distill.teacher=large"), "is trained last")
    row("teacher_later_in_table", (*F, "--workdir", new, "--config.transitions=small=scratch+distil(large); "
                                   "medium=grow(small); large=grow(medium)"), "teacher 'large' is used before it exists")
    row("teacher_other_vocab", ("--config", TINY, "--config.log.progress=False", "--workdir", new,
                                f"--config.distill.teacher={fam}/members/small"), "vocab_size=2048 differs")
    row("teacher_other_tokenizer", (*F, "--workdir", new, f"--config.distill.teacher={fam}/members/large",
                                    "--config.data.train_files=" + w["tok_other"],
                                    "--config.data.eval_files=" + w["tok_other"]), "a teacher must share")
    row("table_cycle", (*F, "--workdir", new, "--config.transitions=small=grow(medium); medium=grow(small); "
                        "large=grow(medium)"), "source 'medium' is used before it exists")
    row("table_missing_member", (*F, "--workdir", new, "--config.transitions=small=scratch; large=grow(small)"),
        "have no row")


def _issue_31_rows(row, w, new, out):
    """Nothing silently wrong, round three: the run's tokenizer pinned, typed configs, safe outputs, damaged records."""
    d, fam = w["d"], str(w["fam"])
    T = ("--config", FAMILY, "--config.budget_scale=0.15", "--config.log.progress=False",
         "--config.log.eval_every_steps=10")  # the tiny family fixture's own command line
    row("expand_data_of_another_tokenizer", ("expand", "--config", FAMILY, "--from", f"{fam}/members/small",
                                             "--workdir", new, "--config.data.train_files=" + w["tok_other"],
                                             "--config.data.eval_files=" + w["tok_other"]),
        "not the tokenizer")
    row("train_data_of_another_tokenizer", (*T, "--workdir", str(d / "fam_otherdata"),
                                            "--config.allow_config_change=True",
                                            "--config.data.train_files=" + w["tok_other"],
                                            "--config.data.eval_files=" + w["tok_other"]),
        "is not the tokenizer this run trained with", d / "fam_otherdata")
    row("train_tokenizer_replaced", (*T, "--workdir", str(d / "fam_swaptok")), "is not the tokenizer this run",
        d / "fam_swaptok")
    row("sample_tokenizer_replaced", ("sample", "--workdir", str(d / "fam_swaptok"), "--member", "small"),
        "is not the tokenizer this run", d / "fam_swaptok")
    row("export_tokenizer_replaced", ("export", "--workdir", str(d / "fam_swaptok"), "--out", out),
        "is not the tokenizer this run", d / "fam_swaptok", Path(out))
    row("export_out_is_the_workdir", ("export", "--workdir", fam, "--out", fam), "is, is inside or contains the run's",
        w["fam"])
    row("export_out_inside_the_workdir", ("export", "--workdir", fam, "--out", f"{fam}/hf"),
        "is, is inside or contains the run's", w["fam"])
    row("train_config_json_empty", (*T, "--workdir", str(d / "fam_emptycfg")), "config.json is damaged",
        d / "fam_emptycfg")
    for name in ("type_str", "type_float", "type_list"):
        row(f"config_{name}", ("--config", w[name], "--workdir", new), "members.big.")
        row(f"plan_config_{name}", ("plan", "--config", w[name]), "members.big.")
    row("config_budget_list", ("--config", w["type_budget_list"], "--workdir", new), "largest_tokens")
    row("plan_config_returns_list", ("plan", "--config", w["returns_list"]), "returned a list")
    row("evaluate_tasks_limit_zero", ("evaluate", "--workdir", fam, "--tasks",
                                      str(REPO / "tasks" / "shakespeare_continuation.jsonl"), "--limit", "0"),
        "limit=0 must be > 0", w["fam"])
    row("evaluate_tasks_limit_negative", ("evaluate", "--workdir", fam, "--tasks",
                                          str(REPO / "tasks" / "shakespeare_continuation.jsonl"), "--limit", "-1"),
        "limit=-1 must be > 0", w["fam"])
    row("evaluate_tasks_member_unknown", ("evaluate", "--workdir", fam, "--tasks",
                                          str(REPO / "tasks" / "shakespeare_continuation.jsonl"), "--member", "nope"),
        "is not a member", w["fam"])


def _check(result, name, words, before, after, cwd_before, cwd_after):
    proc = result
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n" + "\n".join(lines[-15:])
    assert "Traceback" not in proc.stderr, f"{name}: a traceback\n{proc.stderr[-3000:]}"
    assert len(lines) <= 3, f"{name}: {len(lines)} lines of output\n" + "\n".join(lines)
    assert words in lines[-1], f"{name}: {words!r} not in the last line {lines[-1]!r}"
    assert before == after, f"{name}: the workdir / output changed"
    assert cwd_before == cwd_after, f"{name}: the current directory changed"


def read_only(path: Path, on: bool) -> None:
    """A directory nobody may write, root included (CI runs as root, which ignores mode bits): the immutable
    attribute where the filesystem has it, else mode 555."""
    if subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode != 0:
        path.chmod(0o555 if on else 0o755)


def test_bad_input_catalogue(world, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    catalogue = rows(world)
    assert len(catalogue) >= 60
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "marker").write_text("x")

    def one(entry):
        name, args, words, keep, devices = entry
        # rows run 3 at a time: each gets its own never-created output paths, so a row that takes --out's lock (and
        # removes --out again when it refuses the input) never meets another row's
        private = {str(world["d"] / base): str(world["d"] / f"{base}_{name}") for base in ("new_out", "new_wd")}
        args = tuple(private.get(a, a) for a in args)
        keep = [Path(private.get(str(p), str(p))) for p in keep]
        before = tree_hash(*keep)
        try:
            proc = run_cli(*args, cwd=cwd, timeout=180, devices=devices)
        except subprocess.TimeoutExpired as e:  # a row that does not fail fast is a failed row, not a hung test
            proc = subprocess.CompletedProcess(args, -1, "", f"timed out after {e.timeout}s: {e.stderr!r}")
        return proc, before, tree_hash(*keep)

    for path in (world["d"] / "fam_ro", world["ro"]):
        read_only(path, True)
    try:
        cwd_before = tree_hash(cwd)
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(one, catalogue))
    finally:
        for path in (world["d"] / "fam_ro", world["ro"]):
            read_only(path, False)
    failures = []
    for (name, _, words, _, _), (proc, before, after) in zip(catalogue, results):
        try:
            _check(proc, name, words, before, after, cwd_before, tree_hash(cwd))
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, f"{len(failures)} of {len(catalogue)} rows failed:\n\n" + "\n\n".join(failures)


def test_catalogue_has_a_row_for_every_subcommand(world):
    from jaxgrow.cli import flags as cli_flags

    names = [r[0] for r in rows(world)]
    for command in cli_flags.COMMANDS:
        prefix = "" if command == "train" else f"{command}_"
        assert any(n.startswith(prefix) for n in names), command
    assert len(names) == len(set(names))


def test_tokenize_out_on_a_missing_bucket_is_refused(tmp_path, s3_emulator):
    docs = write_formats(tmp_path / "in", make_docs(20))
    proc = run_cli("tokenize", "--inputs", str(docs[".jsonl"]), "--out", "s3://no-such-bucket/tok", "--vocab_size",
                   "300", env=s3_emulator, cwd=tmp_path)
    assert proc.returncode == 2 and "bucket 'no-such-bucket' does not exist" in proc.stderr.strip().splitlines()[-1]
    import s3fs

    assert not s3fs.S3FileSystem().exists("no-such-bucket")  # not created behind the user's back
