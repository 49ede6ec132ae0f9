"""Decoding speed: KV cache vs full recompute, and speculative decoding across family members.

    python experiments/bench_decode.py --workdir W [--out experiments/results/cpu/bench_decode.json]

W: a finished run of configs/family_cpu.py (members m1..m4). Measured in one run, each timing the
second of two identical calls (the first compiles), batch 1, greedy, no EOS stop:
    1. tokens/s of prefill + KV-cache decoding vs the full-recompute decoder (the one `sample` used
       before: the whole causal forward per new token) at 256 new tokens, for m4; both outputs must
       be identical.
    2. wall-time speedup of speculative decoding (gamma = 4) over the target alone at temperature 0
       for m1 -> m4 and m3 -> m4, over held-out prompts; with acceptance rate and tokens per target call.
    3. the same on one GPU when one is present; otherwise says "skipped, no GPU".
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from absl import app, flags

import common

flags.DEFINE_string("workdir", None, "finished family_cpu run (members m1..m4)")
flags.DEFINE_string("out", "experiments/results/cpu/bench_decode.json", "JSON output")
flags.DEFINE_integer("new_tokens", 256, "part 1: tokens generated")
flags.DEFINE_integer("spec_new_tokens", 128, "part 2: tokens generated per prompt")
flags.DEFINE_integer("prompts", 4, "part 2: held-out prompts")
flags.DEFINE_integer("gamma", 4, "part 2: draft tokens per target call")
flags.DEFINE_integer("repeats", 3, "timed repeats (the median is reported)")
FLAGS = flags.FLAGS


def output_and_median_seconds(fn, repeats: int):
    """(fn's output, the median seconds of `repeats` further calls): the first call compiles and gives the output
    (greedy decoding: every call's is the same)."""
    out = fn()
    return out, common.median_seconds(fn, repeats)


def main(argv):
    import jax  # noqa: PLC0415

    from jaxgrow.data import corpus as corpus_lib  # noqa: PLC0415
    from jaxgrow.data import pipeline  # noqa: PLC0415
    from jaxgrow.family import workdir as workdir_lib  # noqa: PLC0415
    from jaxgrow.model import sharding  # noqa: PLC0415
    from jaxgrow.serve import decode  # noqa: PLC0415
    from jaxgrow.serve import speculative  # noqa: PLC0415
    from jaxgrow.train import logs  # noqa: PLC0415

    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required (a finished configs/family_cpu.py run)")
    logs.setup()
    workdir = Path(FLAGS.workdir).absolute()
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    by_name = {s.name: s for s in stages}
    mesh = sharding.eval_mesh(jax.devices()[:1])
    params = {n: workdir_lib.member_params(workdir, s, mesh) for n, s in by_name.items() if n in ("m1", "m3", "m4")}
    corpus = corpus_lib.prepare(cfg.data, cfg.model.vocab_size, workdir)
    prompts = speculative.held_out_prompts(pipeline.device_eval_batches(corpus.eval, cfg.data, mesh), FLAGS.prompts, 16)
    result = {"workdir": str(workdir), "budget_scale": cfg.budget_scale, "backend": jax.default_backend(),
              "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "platform": platform.platform()}

    # 1. KV cache vs full recompute
    m4 = by_name["m4"].model
    n = FLAGS.new_tokens
    kv, t_kv = output_and_median_seconds(lambda: decode.generate(params["m4"], m4, prompts[0], n), FLAGS.repeats)
    full, t_full = output_and_median_seconds(lambda: decode.full_recompute_generate(params["m4"], m4, prompts[0], n),
                                FLAGS.repeats)
    assert kv == full, "KV-cache greedy output differs from the full-recompute decoder"
    result["kv_cache"] = {"member": "m4", "prompt_tokens": len(prompts[0]), "new_tokens": n,
                          "kv_cache_tokens_per_s": n / t_kv, "full_recompute_tokens_per_s": n / t_full,
                          "speedup": t_full / t_kv, "identical_output": kv == full}
    print(f"KV cache: m4, {n} new tokens: {n / t_kv:.1f} tok/s vs full recompute {n / t_full:.1f} tok/s "
          f"-> {t_full / t_kv:.2f}x (outputs identical: {kv == full})", flush=True)

    # 2. speculative decoding, temperature 0
    m = FLAGS.spec_new_tokens
    alone_tokens, alone_times = [], []
    for p in prompts:
        out, t = output_and_median_seconds(lambda: decode.generate(params["m4"], m4, p, m), FLAGS.repeats)
        alone_tokens.append(out)
        alone_times.append(t)
    result["speculative"] = {"gamma": FLAGS.gamma, "temperature": 0.0, "new_tokens": m, "prompts": len(prompts),
                             "target_alone_seconds": sum(alone_times), "pairs": {}}
    for draft in ("m1", "m3"):
        spec_times, accepted, proposed, calls, generated = [], 0, 0, 0, 0
        for p, ref in zip(prompts, alone_tokens):
            r, t = output_and_median_seconds(lambda: speculative.speculative_generate(
                params["m4"], m4, params[draft], by_name[draft].model, p, m, FLAGS.gamma), FLAGS.repeats)
            assert r.tokens[0] == ref, f"speculative {draft}->m4 differs from m4 alone at temperature 0"
            spec_times.append(t)
            accepted, proposed, calls, generated = (accepted + r.accepted, proposed + r.proposed,
                                                    calls + r.target_calls, generated + r.generated)
        speedup = sum(alone_times) / sum(spec_times)
        result["speculative"]["pairs"][f"{draft}->m4"] = {
            "acceptance_rate": accepted / proposed, "tokens_per_target_call": generated / calls,
            "speculative_seconds": sum(spec_times), "speedup": speedup, "identical_to_target": True}
        print(f"speculative {draft}->m4 (gamma {FLAGS.gamma}, T=0, {len(prompts)} prompts x {m} tokens): acceptance "
              f"{accepted / proposed:.3f}, {generated / calls:.2f} tokens/target call, wall-time speedup over m4 "
              f"alone {speedup:.2f}x ({sum(alone_times):.3f}s -> {sum(spec_times):.3f}s)", flush=True)

    # 3. GPU
    if jax.default_backend() != "gpu":
        result["gpu"] = "skipped, no GPU"
        print("GPU: skipped, no GPU", flush=True)
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
