"""`plan`: per-member sizes, FLOPs, budgets, per-device memory and XLA's compiled memory analysis of
the train step (and of each expansion step) on the configured mesh, all ahead of time on abstract
inputs: no weights are allocated, so the 8B member plans on a laptop CPU with forced host devices.

With a chip (`print_plan(cfg, chip="v5p")`, or `hbm_gib=`), every train step and expansion gets a
verdict: "fits (x GiB of y GiB)" or "does not fit: needs x GiB ...; try ..." with suggestions
computed from the compiled figures (see `fit_verdict`). Communication is shown twice: counted in
the compiled HLO and estimated by collectives.analytic_traffic, with their ratio.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp

import numpy as np

from jaxgrow import expand, prune
from jaxgrow.config import InputError
from jaxgrow.family import checks, run_plan
from jaxgrow.family.budgets import StageBudget, lr_schedule
from jaxgrow.model import collectives, decoder, layout, sharding
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


def compile_train_step(cfg: Any, stage: StageBudget, mesh: jax.sharding.Mesh, distill: Any = None):
    """AOT-compiled train step of one stage on abstract, sharded inputs: the very jitted step that
    training runs (train.compile_stage), lowered without allocating any arrays; with a distillation
    teacher (RunPlan.distill), including its frozen forward as the pipeline runs it."""
    # document masking adds the segment-id mask to the step; any EOS id gives the same program shape
    compiled = trainer.compile_stage(stage.model, cfg.optimizer, lr_schedule(cfg, stage), mesh, distill=distill,
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


def compile_pruning(cfg: Any, source: StageBudget, stage: StageBudget, mesh: jax.sharding.Mesh):
    """The prune of `source`'s params into `stage`'s layout, compiled on abstract inputs (the selection's values do
    not change the program's memory; uniform scores stand in for the activation importance)."""
    src = trainer.abstract_state(source.model, trainer.make_optimizer(cfg.optimizer, source.model), mesh).params
    m = source.model
    scores = prune.Importance(hidden=np.ones(m.hidden_size, np.float32),
                              heads=np.ones((m.num_layers, m.num_heads), np.float32),
                              kv_groups=np.ones((m.num_layers, m.num_kv_heads), np.float32),
                              ffn=np.ones((m.num_layers, m.ffn_size), np.float32),
                              layers=np.ones(m.num_layers, np.float32))
    keep = prune.selection(source.model, stage.model, scores=scores)
    fn = jax.jit(functools.partial(prune.prune_params, src_cfg=source.model, dst_cfg=stage.model, keep=keep),
                 out_shardings=sharding.param_shardings(stage.model, mesh))
    with jax.set_mesh(mesh):
        return fn.lower(src).compile()


def analytic_collectives(cfg: Any, stage: StageBudget, abstract_params: Any, mesh,
                         backend: str | None = None) -> dict:
    """collectives.analytic_traffic for one member on this mesh, as `backend` (default: the one
    the step was compiled for) lowers it."""
    shards = []
    for spec, x in layout.iter_leaves(stage.model, abstract_params):
        nbytes = math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
        split = any("fsdp" in (p if isinstance(p, tuple) else (p,)) for p in x.sharding.spec if p)
        shards.append(collectives.ParamShard(nbytes, split, spec.stacked))
    return collectives.analytic_traffic(stage.model, dict(mesh.shape), cfg.data.batch_size, cfg.data.seq_len, shards,
                                        grad_accum_steps=cfg.optimizer.grad_accum_steps,
                                        backend=backend or jax.default_backend())


# ----------------------------------------------------------------------------------------------
# Does it fit? HBM per JAX device (one JAX device per chip on all of these), in GiB.
# TPU: Cloud TPU system-architecture pages, "HBM capacity per chip": v5p 95 GiB (the allocatable
# part of 96 GiB physical; JAX reports 95), v5e 16 GiB, v6e (Trillium) 32 GiB.
# GPU: NVIDIA datasheets, "GPU memory": H100 SXM 80 GB, H200 141 GB, A100 80 GB (the A100 also ships
# with 40 GB: pass hbm_gib=40). JAX preallocates 75% of a GPU's memory unless
# XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise, so on GPU the usable part is that fraction.
CHIP_HBM_GIB = {"v5p": 95, "v5e": 16, "v6e": 32, "h100": 80, "h200": 141, "a100": 80}
GPU_CHIPS = ("h100", "h200", "a100")


class PlanError(InputError):
    """A bad plan flag (chip, HBM size)."""


def chip_memory(chip: str = "", hbm_gib: float = 0.0) -> tuple[str, int] | None:
    """(label, HBM bytes per device) to check against; None when neither is given. hbm_gib > 0
    overrides the chip's table value."""
    chip = (chip or "").strip().lower()
    if hbm_gib < 0:
        raise PlanError(f"--hbm_gib={hbm_gib} must be > 0 (GiB of HBM per device), or 0 to use --chip's")
    if chip and chip not in CHIP_HBM_GIB:
        raise PlanError(f"--chip={chip} is not known; choose one of {', '.join(CHIP_HBM_GIB)} "
                        "(or give --hbm_gib=<GiB per device>)")
    if hbm_gib > 0:
        return (f"{chip}, --hbm_gib={hbm_gib:g}" if chip else f"--hbm_gib={hbm_gib:g}"), int(hbm_gib * 2**30)
    if chip:
        return chip, CHIP_HBM_GIB[chip] * 2**30
    return None


def needed_bytes(memory: dict) -> int:
    """Peak bytes one device holds while the compiled program runs: its arguments and outputs live
    throughout, less the outputs written into donated (aliased) arguments, plus XLA's peak of
    temporaries and the program itself (small; in HBM on TPU/GPU)."""
    return (memory.get("argument_size_in_bytes", 0) + memory.get("output_size_in_bytes", 0)
            - memory.get("alias_size_in_bytes", 0) + memory.get("temp_size_in_bytes", 0)
            + memory.get("generated_code_size_in_bytes", 0))


def _doublings(start: int, ok) -> int | None:
    """The smallest start * 2^k (k >= 1, up to 2^12) with ok(value), else None."""
    value = start
    for _ in range(12):
        value *= 2
        if ok(value):
            return value
    return None


def fit_verdict(memory: dict, hbm: int, cfg: Any, mesh_shape: dict[str, int], state_bytes: int,
                param_bytes: int, train: bool = True) -> str:
    """'fits (x of y)' or 'does not fit: needs x of y; try ...' for one compiled program.

    The suggestions are estimates from this one compile, each change on its own (re-run plan with
    it to confirm); F and A double until the estimate fits, within the batch (data.batch_size
    divisible by data * F * A):
      mesh.fsdp=F   the sharded state (params + optimizer, `state_bytes`; for an expansion all of
                    its memory) shrinks by fsdp / F, the rest is kept (conservative: per-device
                    activations only shrink further when the devices grow and data stays).
      optimizer.grad_accum_steps=A  (train steps) the temporaries scale with the micro-batch, less
                    two gradient-sized buffers (the gradient and its accumulator, 2 x `param_bytes`)
                    that do not.
      model.remat_policy=full  (train steps) when temporaries are most of the need and the blocks
                    are not yet fully rematerialised; its saving is not estimated.
    """
    need = needed_bytes(memory)
    if need <= hbm:
        return f"fits ({_size(need)} of {_size(hbm)})"
    d, f = mesh_shape.get("data", 1), mesh_shape.get("fsdp", 1)
    accum, batch = cfg.optimizer.grad_accum_steps, cfg.data.batch_size
    temp = memory.get("temp_size_in_bytes", 0)
    tries = []
    sharded = state_bytes if train else need - memory.get("generated_code_size_in_bytes", 0)
    with_fsdp = lambda x: need - sharded * (1 - f / x)  # noqa: E731
    new_f = _doublings(f, lambda x: batch % (d * x * accum) == 0 and with_fsdp(x) <= hbm)
    if new_f:  # more fsdp on the same data/tensor axes is more devices: say how many, and how to plan on them
        devices = math.prod(mesh_shape.values()) // f * new_f
        tries.append(f"mesh.fsdp={new_f} (~{_size(with_fsdp(new_f))} on {devices} devices: plan it with "
                     f"--devices {devices} --config.mesh.fsdp={new_f})")
    if train:
        scaling = max(0, temp - 2 * param_bytes)
        with_accum = lambda x: need - scaling * (1 - accum / x)  # noqa: E731
        new_a = _doublings(accum, lambda x: batch % (d * f * x) == 0 and with_accum(x) <= hbm)
        if new_a:
            tries.append(f"optimizer.grad_accum_steps={new_a} (~{_size(with_accum(new_a))})")
    remat = (f"model.remat_policy=full (temporaries are {_size(temp)})"
             if train and cfg.model.remat_policy != "full" and temp > need / 2 else "")
    if tries:
        hint = "; try (estimates; re-run plan with one to confirm) " + " / ".join(tries + [remat] * bool(remat))
    else:
        hint = ("; no single change of mesh.fsdp or optimizer.grad_accum_steps fits it: more devices with both, "
                "or a chip with more HBM" + (f"; {remat} may help" if remat else ""))
    return f"does not fit: needs {_size(need)} of {_size(hbm)}{hint}"


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
    """One row per stage of the run plan (training order): sizes, budget, per-device state, the teacher's params
    per device, and (compile_steps) the compiled train step's and transition's memory and collectives."""
    plan = run_plan.resolve(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    checks.check_batch_divides(cfg, mesh)  # as train checks it, before compiling anything
    rows = []
    for s in plan.stages:
        optimizer = trainer.make_optimizer(cfg.optimizer, s.model)
        abstract = trainer.abstract_state(s.model, optimizer, mesh)
        distill = plan.distill(s)
        row = {"name": s.name, "params": s.params, "non_embedding_params": s.non_embedding_params,
               "train_flops_per_token": s.train_flops_per_token, "tokens": s.tokens, "steps": s.steps,
               "stage_flops": s.train_flops, "param_bytes_per_device": _per_device_bytes(abstract.params),
               "opt_bytes_per_device": _per_device_bytes(abstract.opt_state), "transition": s.transition.describe(),
               "teacher_flops": s.teacher_active_steps * s.teacher_forward_flops_per_token * s.tokens / s.steps}
        if distill is not None:
            teacher = jax.eval_shape(lambda k, m=distill.teacher_cfg: decoder.init_params(m, k), jax.random.key(0))
            shards = sharding.param_shardings(distill.teacher_cfg, mesh)
            row["teacher_bytes_per_device"] = _per_device_bytes(jax.tree.map(
                lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), teacher, shards))
        if compile_steps:
            row.update(_compiled_row(cfg, plan, s, mesh, abstract, distill))
        rows.append(row)
    return mesh, rows


def _compiled_row(cfg: Any, plan, s: StageBudget, mesh, abstract, distill) -> dict:
    row: dict = {}
    t0 = time.perf_counter()
    _, compiled = compile_train_step(cfg, s, mesh, distill)
    row["train_step_memory"] = _memory(compiled)
    row["train_step_compile_s"] = time.perf_counter() - t0
    row["collectives"] = collectives.hlo_collectives(compiled.as_text())
    row["analytic_collectives"] = analytic_collectives(cfg, s, abstract.params, mesh)
    if jax.default_backend() == "cpu":  # what the same step would send where it will run
        row["accelerator_collectives"] = analytic_collectives(cfg, s, abstract.params, mesh, "tpu")
        row["activation_dtype"] = s.model.dtype
    init = s.transition.init
    if init != "scratch":
        t0 = time.perf_counter()
        compile_fn = compile_expansion if init == "grow" else compile_pruning
        row["expansion_memory"] = _memory(compile_fn(cfg, plan.stage(s.transition.source), s, mesh))
        row["expansion_compile_s"] = time.perf_counter() - t0
        row["transition_kind"] = "expansion" if init == "grow" else "pruning"
    return row


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _memory_line(m: dict, aliased: bool = False) -> str:
    """A compiled program's per-device memory analysis, as plan prints it."""
    alias = f" (aliased {_gib(m.get('alias_size_in_bytes', 0))})" if aliased else ""
    return (f"arguments {_gib(m.get('argument_size_in_bytes', 0))}, outputs {_gib(m.get('output_size_in_bytes', 0))}"
            f"{alias}, temporaries {_gib(m.get('temp_size_in_bytes', 0))} per device")


def _size(n: float) -> str:
    return _gib(n) if n >= 2**30 else _mib(n)


def _print_traffic(r: dict, backend: str) -> None:
    c, a = r["collectives"], r["analytic_collectives"]
    kinds = ", ".join(f"{k} {v['count']}x {_mib(v['bytes'])}" for k, v in c.items() if v["count"])
    compiled = sum(v["traffic"] for v in c.values())
    print(f"  collectives per step (compiled HLO): {kinds or 'none'}; per-device traffic {_mib(compiled)}")
    ratio = f"{compiled / a['total']:.2f}" if a["total"] else "n/a"
    lowering = " (as XLA:CPU lowers it: gradient all-reduce, float32 activations)" if backend == "cpu" else ""
    print(f"  analytic per-device traffic{lowering}: fsdp gathers {_mib(a['fsdp_gather'])} + fsdp gradient "
          f"reduction {_mib(a['fsdp_reduce'])} + data {_mib(a['data'])} + tensor {_mib(a['tensor'])} = "
          f"{_mib(a['total'])}; compiled / analytic = {ratio}")
    if "accelerator_collectives" in r:
        print(f"  analytic on TPU/GPU (reduce-scatter, {r['activation_dtype']} activations): "
              f"{_mib(r['accelerator_collectives']['total'])}")


def print_plan(cfg: Any, compile_steps: bool = True, *, chip: str = "", hbm_gib: float = 0.0) -> list[dict]:
    """Prints the plan; with `chip` (a CHIP_HBM_GIB key) or `hbm_gib`, a fit verdict for every
    compiled train step and expansion. Raises PlanError for an unknown chip."""
    target = chip_memory(chip, hbm_gib)  # before minutes of compiling
    chip = (chip or "").strip().lower()
    mesh, rows = plan_rows(cfg, compile_steps)
    backend = jax.default_backend()
    mesh_shape = dict(mesh.shape)
    print(f"mesh {mesh_shape} on {mesh.devices.size} {jax.devices()[0].platform} device(s); mode {cfg.mode}; "
          f"batch {cfg.data.batch_size} x seq {cfg.data.seq_len}")
    print(tpu_slices(mesh.devices.size) + " (v5p names count TensorCores, 2 per chip; v5e/v6e names count chips)")
    if target:
        label, hbm = target
        note = "; JAX preallocates 75% of it unless XLA_PYTHON_CLIENT_MEM_FRACTION is raised" if chip in GPU_CHIPS else ""
        print(f"fit on {label}: {_size(hbm)} HBM per device{note}; need = arguments + outputs - aliased + "
              "temporaries + code" + (" of XLA:CPU's compile (a TPU/GPU compile lays out memory differently: "
                                      "treat a margin under ~10% as uncertain)" if backend == "cpu" else ""))
    total = 0.0
    for r in rows:
        total += r["stage_flops"]
        print(f"\n[{r['name']}] params {r['params'] / 1e9:.3f}B (non-embedding {r['non_embedding_params'] / 1e9:.3f}B), "
              f"train FLOPs/token {r['train_flops_per_token']:.3g}")
        print(f"  transition: {r['transition']}")
        teacher = f", of which the teacher's forwards {r['teacher_flops']:.3g}" if r["teacher_flops"] else ""
        print(f"  stage: {r['tokens']:.3g} tokens in {r['steps']} steps = {r['stage_flops']:.3g} FLOPs{teacher} "
              f"(cumulative {total:.3g})")
        print(f"  per device: params {_gib(r['param_bytes_per_device'])} + optimizer {_gib(r['opt_bytes_per_device'])}"
              + (f" + frozen teacher params {_gib(r['teacher_bytes_per_device'])}"
                 if "teacher_bytes_per_device" in r else ""))
        state = r["param_bytes_per_device"] + r["opt_bytes_per_device"]
        if "train_step_memory" in r:
            m = r["train_step_memory"]
            print(f"  compiled train step ({r['train_step_compile_s']:.1f}s): {_memory_line(m, aliased=True)}")
            if target and m:
                r["train_step_fit"] = fit_verdict(m, target[1], cfg, mesh_shape, state, r["param_bytes_per_device"])
                print(f"  train step on {target[0]}: {r['train_step_fit']}")
        if "collectives" in r:
            _print_traffic(r, backend)
        if "expansion_memory" in r:
            m, kind = r["expansion_memory"], r["transition_kind"]
            print(f"  compiled {kind} from its source member ({r['expansion_compile_s']:.1f}s): {_memory_line(m)}")
            if target and m:
                r["expansion_fit"] = fit_verdict(m, target[1], cfg, mesh_shape, state, r["param_bytes_per_device"],
                                                 train=False)
                print(f"  {kind} on {target[0]}: {r['expansion_fit']}")
    print(f"\nfamily total: {total:.4g} train FLOPs")
    return rows
