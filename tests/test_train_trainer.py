"""Train step: learning, sharded == single device, bitwise resume, grad accumulation, NaN guard."""

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgrow.data import corpus as corpus_lib, pipeline
from jaxgrow.family import budgets
from jaxgrow.model import losses as losses_lib, sharding
from jaxgrow.train import checkpoint, trainer


@pytest.fixture(scope="module")
def tiny():
    c = importlib.import_module("configs.tiny").get_config()
    corpus = corpus_lib.prepare(c.data, c.model.vocab_size, None)
    return c, corpus


def mesh_of(data_=1, fsdp=1, tensor=1, devices=None):
    cfg = ml_collections.ConfigDict({"data": data_, "fsdp": fsdp, "tensor": tensor, "dcn_data": 1})
    devices = devices or jax.devices()[: data_ * fsdp * tensor]
    return sharding.make_mesh(cfg, devices)


def setup_step(c, mesh, steps=100, accum=1):
    m = c.model
    opt = trainer.make_optimizer(c.optimizer, m)
    stage = budgets.budgets(c)[0]
    sched = budgets.lr_schedule(c, stage)
    state = trainer.init_state(m, opt, jax.random.key(0), mesh)
    shard = jax.tree.map(lambda x: x.sharding, state)
    step = trainer.jit_train_step(trainer.make_train_step(m, opt, sched, grad_accum_steps=accum), shard, mesh)
    return state, step, opt


def batches(corpus, c, n, mesh, start=0):
    ds = pipeline.train_dataset(corpus.train, c.data.seq_len, c.data.batch_size, seed=0)
    it = pipeline.DeviceIterator(ds, sharding.batch_sharding(mesh), state={"next_index": start} if start else None)
    return [next(it) for _ in range(n)]


def test_loss_decreases_on_tiny_config(tiny):
    c, corpus = tiny
    mesh = mesh_of()
    state, step, _ = setup_step(c, mesh)
    eval_step = jax.jit(losses_lib.make_eval_step(c.model))
    eval_b = [jnp.asarray(b) for b in pipeline.eval_batches(corpus.eval, c.data.seq_len, c.data.batch_size, 2)]
    before = losses_lib.evaluate_loss(eval_step, state.params, eval_b)
    with jax.set_mesh(mesh):
        for b in batches(corpus, c, 40, mesh):
            state, metrics = step(state, b)
    after = losses_lib.evaluate_loss(eval_step, state.params, eval_b)
    assert before > 8.0  # ~ln(4096) at init
    assert after < before - 1.0


def test_train_step_on_8_devices_equals_one_device(tiny, devices8):
    c, corpus = tiny
    results = []
    for mesh in (mesh_of(devices=jax.devices()[:1]), mesh_of(2, 2, 2)):
        state, step, _ = setup_step(c, mesh)
        losses = []
        with jax.set_mesh(mesh):
            for b in batches(corpus, c, 3, mesh):
                state, metrics = step(state, b)
                losses.append(float(metrics["loss"]))
        results.append((losses, jax.device_get(state.params)))
    (l1, p1), (l8, p8) = results
    np.testing.assert_allclose(l1, l8, atol=1e-5, rtol=0)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_params_are_sharded_by_the_logical_rules(tiny, devices8):
    c, _ = tiny
    mesh = mesh_of(2, 2, 2)
    state, _, _ = setup_step(c, mesh)
    q = state.params["layers"]["attn"]["q_proj"]  # (layers, embed, q_heads, head_dim)
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    mu = state.opt_state[1].mu["layers"]["attn"]["q_proj"]
    assert mu.sharding.spec == q.sharding.spec
    emb = state.params["embed"]["embedding"]  # (vocab, embed)
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert q.addressable_shards[0].data.shape == (4, 64, 2, 32)


def test_save_restore_next_step_is_bitwise_identical(tiny, tmp_path):
    c, corpus = tiny
    mesh = mesh_of()
    state, step, opt = setup_step(c, mesh)
    b = batches(corpus, c, 3, mesh)
    with jax.set_mesh(mesh):
        state, _ = step(state, b[0])
        state, _ = step(state, b[1])
        ckpts = checkpoint.Checkpoints(tmp_path / "ck", keep=2)
        ckpts.save(2, state.params, state.opt_state, checkpoint.Meta(
            stage=0, member="model", mode="progressive", model=c.model.to_dict(), data_state={"next_index": 2}))
        ckpts.wait()
        uninterrupted, _ = step(state, b[2])
        expected = jax.device_get(uninterrupted)

        abstract = trainer.abstract_state(c.model, opt, mesh)
        params, opt_state, meta = ckpts.restore_latest_good(abstract.params, abstract.opt_state)
        restored = trainer.TrainState(jnp.asarray(meta["step"], jnp.int32), params, opt_state, jnp.zeros((), jnp.int32))
        # the data iterator resumes at the checkpointed position
        resumed_batch = batches(corpus, c, 1, mesh, start=meta["data_state"]["next_index"])[0]
        np.testing.assert_array_equal(np.asarray(resumed_batch), np.asarray(b[2]))
        again, _ = step(restored, resumed_batch)
    got = jax.device_get(again)
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_array_equal(x, y)


def test_gradient_accumulation_matches_full_batch(tiny):
    c, corpus = tiny
    mesh = mesh_of()
    b = batches(corpus, c, 1, mesh)[0]
    outs = []
    for accum in (1, 4):
        state, step, _ = setup_step(c, mesh, accum=accum)
        with jax.set_mesh(mesh):
            state, m = step(state, b)
        outs.append((float(m["loss"]), float(m["grad_norm"]), jax.device_get(state.params)))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-5)
    assert outs[0][1] == pytest.approx(outs[1][1], rel=1e-4)
    for x, y in zip(jax.tree.leaves(outs[0][2]), jax.tree.leaves(outs[1][2])):
        np.testing.assert_allclose(x, y, atol=1e-5)  # Adam normalises, so tiny grad noise shows


def test_nonfinite_step_is_skipped_and_counted(tiny):
    c, corpus = tiny
    mesh = mesh_of()
    state, _, opt = setup_step(c, mesh)
    sched = lambda s: jnp.float32(1e-3)  # noqa: E731
    step = jax.jit(trainer.make_train_step(c.model, opt, sched))
    b = batches(corpus, c, 1, mesh)[0]
    poisoned = jax.tree.map(lambda x: x, state)
    poisoned.params["final_norm"]["scale"] = poisoned.params["final_norm"]["scale"].at[0].set(jnp.nan)
    before = jax.device_get(poisoned.params)
    after, metrics = step(poisoned, b)
    assert not bool(metrics["finite"]) and int(after.nonfinite) == 1 and int(after.step) == 1
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(after.params))):
        np.testing.assert_array_equal(x, y)  # update skipped
