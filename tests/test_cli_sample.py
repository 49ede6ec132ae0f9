"""jaxgrow.sampling: jitted decoding (one compilation, greedy = argmax of the full forward, top-k,
seeds, EOS) and the member selection `sample` shares with `export`."""

import jax
import numpy as np
import pytest

from hf_common import CONFIGS, our_logits, random_params
from jaxgrow import config as config_lib
from jaxgrow.family import hf_runs as commands, serving as sample_cmd
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.serve import decode


def test_generate_is_one_compilation_and_samples_sensibly():
    cfg = config_lib.model_config(vocab_size=64, init_std=0.2, **CONFIGS["mqa_untied"])
    params = jax.device_put(random_params(cfg))
    prompt = [1, 2, 3]
    greedy = decode.generate(params, cfg, prompt, 12)
    before = decode._decode._cache_size()
    assert decode.generate(params, cfg, prompt + [4, 5], 12) is not None  # same buffer bucket: no recompile
    assert decode._decode._cache_size() == before

    def next_logits(seq):  # reference: the forward over a zero-padded row (one shape, one compilation)
        row = np.zeros((1, 32), np.int32)
        row[0, :len(seq)] = seq
        return our_logits(params, cfg, row)[0, len(seq) - 1]

    np.testing.assert_allclose(next_logits(prompt), our_logits(params, cfg, np.asarray([prompt]))[0, -1], atol=1e-5)
    seq = list(prompt)  # greedy = argmax of the full forward at every step
    for _ in range(12):
        seq.append(int(np.argmax(next_logits(seq))))
    assert greedy == seq[len(prompt):]
    assert decode.generate(params, cfg, prompt, 12, temperature=1.0, top_k=1, seed=5) == greedy

    a = decode.generate(params, cfg, prompt, 30, temperature=1.0, seed=1)
    assert a == decode.generate(params, cfg, prompt, 30, temperature=1.0, seed=1)
    assert a != decode.generate(params, cfg, prompt, 30, temperature=1.0, seed=2)
    top3 = decode.generate(params, cfg, prompt, 10, temperature=5.0, top_k=3, seed=0)
    seq = list(prompt)
    for t in top3:  # every sampled token is among the 3 most likely at its step
        assert t in np.argsort(next_logits(seq))[-3:]
        seq.append(t)

    stop = greedy[4]  # stops right after emitting eos_id
    assert decode.generate(params, cfg, prompt, 12, eos_id=stop) == greedy[:greedy.index(stop) + 1]
    assert decode.generate(params, cfg, prompt, 0) == []
    with pytest.raises(config_lib.InputError, match="temperature"):
        decode.generate(params, cfg, prompt, 4, temperature=-1.0)


def test_workdir_commands_refuse_bad_members(tmp_path):
    work = tmp_path / "w"
    with pytest.raises(config_lib.InputError, match="no config.json"):
        commands.export_workdir(work, tmp_path / "out", None)
    cfg = config_lib.base_config()
    config_lib.add_member(cfg, "only", hidden_size=64)
    work.mkdir()
    workdir_lib.write_config(cfg, work)
    with pytest.raises(config_lib.InputError, match="--member=nope is not a member"):
        commands.export_workdir(work, tmp_path / "out", "nope")
    with pytest.raises(config_lib.InputError, match="holds no finished member"):
        sample_cmd.sample_workdir(work, None, "hi", 4, 0.0, 0, 0)
    with pytest.raises(config_lib.InputError, match="top_k"):
        sample_cmd.sample_workdir(work, "only", "hi", 4, 0.0, -1, 0)
    with pytest.raises(config_lib.InputError, match="holds no finished member"):  # the same selection as sample
        commands.export_workdir(work, tmp_path / "out", None)


@pytest.mark.slow
def test_sample_on_a_sentencepiece_run_starts_an_empty_prompt_at_and_stops_at_its_eos(tmp_path, monkeypatch):
    """Issue 32's bug: `sample` hard-coded <|endoftext|>; on a run trained with a SentencePiece `.model` tokenizer
    (Mistral-7B's, whose end of text is </s>) `--prompt ''` failed and a continuation decoded past </s>."""
    from conftest import run_cli  # noqa: PLC0415

    mc = pytest.importorskip("mistral_common")
    from pathlib import Path  # noqa: PLC0415

    model_file = Path(mc.__file__).parent / "data" / "tokenizer.model.v1"
    w = tmp_path / "sp"
    run_cli("--config", "configs/tiny.py", "--workdir", str(w), f"--config.data.tokenizer={model_file}",
            "--config.model.vocab_size=32000", "--config.model.hidden_size=32", "--config.model.ffn_size=64",
            "--config.model.num_layers=1", "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
            "--config.model.head_dim=16", "--config.data.seq_len=32", "--config.data.batch_size=4",
            "--config.data.eval_batches=1", "--config.budget_scale=0.001", "--config.log.progress=False", check=True)
    proc = run_cli("sample", "--workdir", str(w), "--prompt", "", "--max_new_tokens", "3", check=True)
    assert "=== model ===" in proc.stdout
    # the decode loop is told the run's EOS (</s>), starts from it, and the continuation stops before it
    info = sample_cmd.evaluation.run_tokenizer(w, workdir_lib.read_run_config(w))
    eos = info.tokenizer.token_to_id("</s>")
    assert info.eos_id == eos and info.eos_token == "</s>"
    seen = {}

    def fake_generate(params, model_cfg, prompt_ids, max_new_tokens, temperature, top_k, seed, eos_id, top_p):
        seen.update(prompt=list(prompt_ids), eos=eos_id)
        return info.tokenizer.encode("Hello world", add_special_tokens=False).ids + [eos_id]

    monkeypatch.setattr(sample_cmd.decode, "generate", fake_generate)
    text = sample_cmd.sample_workdir(w, None, "", 8, 0.0, 0, 0)["model"]
    assert seen == {"prompt": [eos], "eos": eos}
    assert text.strip() == "Hello world" and "</s>" not in text
