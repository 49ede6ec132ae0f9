"""Data wing, tokenizers: real published tokenizers (Mistral-7B's), an imported HF Llama trained with its own
tokenizer, and the import's tokenizer warnings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from etils import epath

from conftest import run_cli
from data_common import make_docs, write_formats
from jaxgrow import config as config_lib
from jaxgrow.data import formats, shards, tokenizers as tokenizers_lib


def test_real_mistral_tokenizer_with_padding_and_eos(tmp_path, mistral_tokenizer):
    info = tokenizers_lib.load_tokenizer(mistral_tokenizer, 32000 + 128, bos_token="<s>")
    assert info.eos_token == "</s>" and info.eos_id == 2 and info.bos_id == 1 and info.size == 32000
    with pytest.raises(formats.DataError, match=r"has 32000 tokens but model.vocab_size=31999"):
        tokenizers_lib.load_tokenizer(mistral_tokenizer, 31999)
    files = write_formats(tmp_path / "in", make_docs(40))
    m = shards.tokenize_files([epath.Path(files[".parquet"])], epath.Path(tmp_path / "t"), info, progress=False)
    store = shards.TokenStore([(tmp_path / "t", m)])
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
    from jaxgrow.cli import commands  # noqa: PLC0415

    with caplog.at_level("WARNING", logger="jaxgrow"):
        commands._warn_tokenizer_mismatch(mistral_tokenizer, config_lib.model_config(vocab_size=32768))
    assert not caplog.records  # 32000 tokens padded to 32768, </s> found: trains as is
    with caplog.at_level("WARNING", logger="jaxgrow"):
        commands._warn_tokenizer_mismatch(mistral_tokenizer, config_lib.model_config(vocab_size=1024))
    assert len(caplog.records) == 1 and "model.vocab_size=1024" in caplog.text
