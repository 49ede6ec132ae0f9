"""`plan`: per-member sizes, FLOPs, budgets, per-device memory and XLA's compiled memory analysis of
the train step (and of each expansion step) on the configured mesh, all ahead of time on abstract
inputs: no weights are allocated, so the 8B member plans on a laptop CPU with forced host devices.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxgrow import expand
from jaxgrow.family import checks
from jaxgrow.family.budgets import StageBudget, budgets, lr_schedule
from jaxgrow.model import collectives, sharding
from jaxgrow.train import trainer


def _per_device_bytes(abstract: Any) -> int:
    """Bytes one device holds for a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(abstract):
        shard = x.sharding.shard_shape(x.shape)
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return total


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
    return {k: int(getattr(m, k, 0)) for k in keys}


def compile_train_step(cfg: Any, stage: StageBudget, mesh: jax.sharding.Mesh, prev: StageBudget | None = None):
    """AOT-compiled train step of one stage on abstract, sharded inputs: the very jitted step that
    training runs (train.compile_stage), lowered without allocating any arrays; with consistency
    training, including the frozen teacher (`prev`) as the pipeline runs it."""
    consistency = None
    if prev is not None and cfg.mode == "progressive" and cfg.consistency.weight > 0:
        consistency = trainer.Consistency(prev.model, cfg.consistency.weight, stage.teacher_active_steps)
    # document masking adds the segment-id mask to the step; any EOS id gives the same program shape
    compiled = trainer.compile_stage(stage.model, cfg.optimizer, lr_schedule(cfg, stage), mesh, consistency=consistency,
                                   document_eos=0 if cfg.data.get("document_masking", False) else None)
    return compiled.abstract, compiled.lower(cfg.data.batch_size, cfg.data.seq_len).compile()


def compile_expansion(cfg: Any, prev: StageBudget, stage: StageBudget, mesh: jax.sharding.Mesh):
    src = trainer.abstract_state(prev.model, trainer.make_optimizer(cfg.optimizer, prev.model), mesh).params
    dst = sharding.param_shardings(stage.model, mesh)
    e = cfg.expansion
    fn = jax.jit(functools.partial(expand.expand_params, src_cfg=prev.model, dst_cfg=stage.model, method=e.method,
                                   depth=e.depth, depth_position=e.depth_position, noise=e.noise, map_seed=cfg.seed),
                 out_shardings=dst)
    with jax.set_mesh(mesh):
        return fn.lower(src, key=jax.random.key(0)).compile()


def analytic_collectives(cfg: Any, stage: StageBudget, abstract_params: Any, mesh) -> dict:
    """collectives.analytic_traffic for one member on this mesh."""
    shards = []
    for x in jax.tree.leaves(abstract_params):
        nbytes = math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
        shards.append((nbytes, any("fsdp" in (p if isinstance(p, tuple) else (p,)) for p in x.sharding.spec if p)))
    return collectives.analytic_traffic(stage.model, dict(mesh.shape), cfg.data.batch_size, cfg.data.seq_len, shards)


V5E_V6E_CHIPS = (1, 4, 8, 16, 32, 64, 128, 256)


def tpu_slices(devices: int) -> str:
    """The Cloud TPU slices whose JAX device count is `devices` (one JAX device per chip).
    v5p names count TensorCores (2 per chip: v5p-64 = 32 chips); v5e and v6e names count chips."""
    names = []
    if devices % 4 == 0 and devices <= 6144:
        names.append(f"v5p-{2 * devices}")
    if devices in V5E_V6E_CHIPS:
        names += [f"v5e-{devices}", f"v6e-{devices}"]
    if not names:
        return f"no single TPU v5p/v5e/v6e slice has {devices} chips"
    return f"TPU slices with {devices} chips = {devices} JAX devices: {', '.join(names)}"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def plan_rows(cfg: Any, compile_steps: bool = True) -> tuple[jax.sharding.Mesh, list[dict]]:
    checks.validate(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    stages = budgets(cfg)
    rows = []
    for i, s in enumerate(stages):
        optimizer = trainer.make_optimizer(cfg.optimizer, s.model)
        abstract = trainer.abstract_state(s.model, optimizer, mesh)
        row = {"name": s.name, "params": s.params, "non_embedding_params": s.non_embedding_params,
               "train_flops_per_token": s.train_flops_per_token, "tokens": s.tokens, "steps": s.steps,
               "stage_flops": s.train_flops, "param_bytes_per_device": _per_device_bytes(abstract.params),
               "opt_bytes_per_device": _per_device_bytes(abstract.opt_state)}
        if compile_steps:
            t0 = time.perf_counter()
            _, compiled = compile_train_step(cfg, s, mesh, stages[i - 1] if i > 0 else None)
            row["train_step_memory"] = _memory(compiled)
            row["train_step_compile_s"] = time.perf_counter() - t0
            row["collectives"] = collectives.hlo_collectives(compiled.as_text())
            row["analytic_collectives"] = analytic_collectives(cfg, s, abstract.params, mesh)
            if i > 0 and cfg.mode == "progressive":
                t0 = time.perf_counter()
                row["expansion_memory"] = _memory(compile_expansion(cfg, stages[i - 1], s, mesh))
                row["expansion_compile_s"] = time.perf_counter() - t0
        rows.append(row)
    return mesh, rows


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def print_plan(cfg: Any, compile_steps: bool = True) -> list[dict]:
    mesh, rows = plan_rows(cfg, compile_steps)
    print(f"mesh {dict(mesh.shape)} on {mesh.devices.size} {jax.devices()[0].platform} device(s); mode {cfg.mode}; "
          f"batch {cfg.data.batch_size} x seq {cfg.data.seq_len}")
    print(tpu_slices(mesh.devices.size) + " (v5p names count TensorCores, 2 per chip; v5e/v6e names count chips)")
    total = 0.0
    for r in rows:
        total += r["stage_flops"]
        print(f"\n[{r['name']}] params {r['params'] / 1e9:.3f}B (non-embedding {r['non_embedding_params'] / 1e9:.3f}B), "
              f"train FLOPs/token {r['train_flops_per_token']:.3g}")
        print(f"  stage: {r['tokens']:.3g} tokens in {r['steps']} steps = {r['stage_flops']:.3g} FLOPs "
              f"(cumulative {total:.3g})")
        print(f"  per device: params {_gib(r['param_bytes_per_device'])} + optimizer {_gib(r['opt_bytes_per_device'])}")
        if "train_step_memory" in r:
            m = r["train_step_memory"]
            print(f"  compiled train step ({r['train_step_compile_s']:.1f}s): arguments {_gib(m.get('argument_size_in_bytes', 0))}, "
                  f"outputs {_gib(m.get('output_size_in_bytes', 0))} (aliased {_gib(m.get('alias_size_in_bytes', 0))}), "
                  f"temporaries {_gib(m.get('temp_size_in_bytes', 0))} per device")
        if "collectives" in r:
            c, a = r["collectives"], r["analytic_collectives"]
            kinds = ", ".join(f"{k} {v['count']}x {_mib(v['bytes'])}" for k, v in c.items() if v["count"])
            print(f"  collectives per step (compiled HLO): {kinds or 'none'}; per-device traffic "
                  f"{_mib(sum(v['traffic'] for v in c.values()))}")
            print(f"  analytic per-device traffic: fsdp {_mib(a['fsdp'])} + data {_mib(a['data'])} + "
                  f"tensor {_mib(a['tensor'])} = {_mib(a['total'])}")
        if "expansion_memory" in r:
            m = r["expansion_memory"]
            print(f"  compiled expansion from the previous member ({r['expansion_compile_s']:.1f}s): arguments "
                  f"{_gib(m.get('argument_size_in_bytes', 0))}, outputs {_gib(m.get('output_size_in_bytes', 0))}, "
                  f"temporaries {_gib(m.get('temp_size_in_bytes', 0))} per device")
    print(f"\nfamily total: {total:.4g} train FLOPs")
    return rows
