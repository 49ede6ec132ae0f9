"""How close each expansion method keeps a *trained* model's function.

    python experiments/expansion_deviation.py --workdir W [--member small] [--to medium]

Grows a finished member of a run into the next member's shape with every method x depth strategy
and prints, on the run's held-out batches: the largest absolute logit difference, the mean per-token
KL(p_source || p_grown) and the held-out loss before and after. `tile` needs integer factors, so
for it the target is the source with every width doubled and one more layer.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from jaxgrow import expand
from jaxgrow.data import corpus as corpus_lib
from jaxgrow.data import pipeline
from jaxgrow.eval import evaluate
from jaxgrow.family import workdir as workdir_lib
from jaxgrow.model import decoder
from jaxgrow.model import losses
from jaxgrow.model import sharding

flags.DEFINE_string("workdir", None, "a finished run")
flags.DEFINE_string("member", None, "source member (default: the first)")
flags.DEFINE_string("to", None, "target member (default: the one after the source)")
FLAGS = flags.FLAGS

CASES = [("zero", "identity"), ("tile", "identity"), ("bert2bert_fpi", "identity"), ("bert2bert_aki", "identity"),
         ("zero", "stack"), ("zero", "interleave"), ("bert2bert_aki", "stack")]


def main(_):
    workdir = Path(FLAGS.workdir)
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    names = [s.name for s in stages]
    src = stages[names.index(FLAGS.member) if FLAGS.member else 0]
    dst = stages[names.index(FLAGS.to) if FLAGS.to else names.index(src.name) + 1]
    corpus = corpus_lib.prepare(cfg.data, cfg.model.vocab_size, workdir)
    data = cfg.data.copy_and_resolve_references()
    data.eval_batches = 4  # the first 4 of the run's held-out batches, on one device
    batches = pipeline.device_eval_batches(corpus.eval, data, sharding.eval_mesh(jax.devices()[:1]))
    params = jax.device_get(workdir_lib.member_params(workdir, src))
    base_loss = evaluate.eval_loss(params, src.model, batches)
    print(f"source {src.name} (held-out loss {base_loss:.4f}) -> {dst.name}-shaped target")
    print(f"{'method':15s} {'depth':11s} {'max|dlogit|':>11s} {'KL(src||dst)':>13s} {'loss after':>11s}")
    for method, depth in CASES:
        target = dst.model
        if method == "tile":
            d = src.model.to_dict()
            for key in ("hidden_size", "ffn_size", "num_heads", "num_kv_heads"):
                d[key] *= 2
            d["num_layers"] += 1
            target = ml_collections.ConfigDict(d)
        target, _ = expand.resolve_target(src.model, target, method)
        grown = jax.jit(functools.partial(expand.expand_params, src_cfg=src.model, dst_cfg=target, method=method,
                                          depth=depth))(params, key=jax.random.key(0))
        diff, kl = 0.0, 0.0
        for b in batches:
            a = decoder.logits(params, src.model, b[:, :-1])
            g = decoder.logits(grown, target, b[:, :-1])
            diff = max(diff, float(jnp.abs(a - g).max()))
            kl += float(losses.kl_divergence(a, g)) / len(batches)
        loss = evaluate.eval_loss(grown, target, batches)
        print(f"{method:15s} {depth:11s} {diff:11.2e} {kl:13.2e} {loss:11.4f}")


if __name__ == "__main__":
    app.run(main)
