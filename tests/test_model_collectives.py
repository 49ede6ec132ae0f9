"""The HLO collective counter on a hand-written module: while trip counts, the three replica-group
spellings, async starts, reduce-scatter sizes."""

import pytest

from jaxgrow.model import collectives


HLO = """HloModule m

%add (x: f32[], y: f32[]) -> f32[] {
  ROOT %a = f32[] add(f32[] %x, f32[] %y)
}

%body (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %ag = f32[8,4]{1,0} all-gather(f32[2,4]{1,0} %x), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}
  %ar = (f32[8,4]{1,0}, bf16[16]{0}) all-reduce(%ag, %y), channel_id=2, replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add
  ROOT %t = (s32[], f32[8,4]) tuple(%i, %ag)
}

%cond (p: (s32[], f32[8,4])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[8,4]) -> f32[8,4] {
  %w = (s32[], f32[8,4]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %rs = f32[2,4]{1,0} reduce-scatter(f32[8,4]{1,0} %a), channel_id=3, replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([8]) {'axis_1'}, dimensions={0}, to_apply=%add
  %cps = (f32[8,4]{1,0}, f32[8,4]{1,0}, u32[]) collective-permute-start(%a), channel_id=4, source_target_pairs={{0,1},{1,0}}
  %cpd = f32[8,4]{1,0} collective-permute-done(%cps)
  ROOT %r = f32[8,4]{1,0} copy(%cpd)
}
"""


def test_counts_bytes_and_ring_traffic():
    c = collectives.hlo_collectives(HLO)
    assert c["all-gather"] == {"count": 3, "bytes": 3 * 128.0, "traffic": 3 * 128 * 3 / 4}
    assert c["all-reduce"] == {"count": 3, "bytes": 3 * 160.0, "traffic": 3 * 160 * 2 * 1 / 2}
    assert c["reduce-scatter"] == {"count": 1, "bytes": 128.0, "traffic": 128 * 3 / 4}
    assert c["collective-permute"] == {"count": 1, "bytes": 128.0, "traffic": 128.0}
    assert c["all-to-all"]["count"] == 0


def test_tpu_slice_names_count_chips():
    from jaxgrow.cli import plan  # noqa: PLC0415

    assert plan.tpu_slices(32) == "TPU slices with 32 chips = 32 JAX devices: v5p-64, v5e-32, v6e-32"
    assert "v5p-128, v5e-64, v6e-64" in plan.tpu_slices(64)
    assert plan.tpu_slices(4).endswith("v5p-8, v5e-4, v6e-4")
    assert plan.tpu_slices(12) == "TPU slices with 12 chips = 12 JAX devices: v5p-24"
    assert plan.tpu_slices(6).startswith("no single TPU")


def test_plan_with_fewer_devices_than_the_mesh_exits_2():
    from conftest import run_cli  # noqa: PLC0415

    proc = run_cli("plan", "--config", "configs/family_micro.py", "--devices", "4", "--config.mesh.data=2",
                   "--config.mesh.fsdp=2", "--config.mesh.tensor=2", env={"XLA_FLAGS": ""})
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxgrow: error: mesh") and "4 devices" in last


def _compiled_and_analytic(mesh_axes: tuple[int, int, int], grad_accum: int, remat: str):
    """A small bfloat16 member's train step compiled on 8 forced host devices: (counted, modelled)."""
    from jaxgrow.cli import plan  # noqa: PLC0415
    from jaxgrow.config import add_member, base_config, model_config  # noqa: PLC0415
    from jaxgrow.family.budgets import budgets  # noqa: PLC0415
    from jaxgrow.model import sharding  # noqa: PLC0415

    cfg = base_config()
    cfg.model = model_config(vocab_size=512, head_dim=32, num_kv_heads=2, dtype="bfloat16", remat_policy=remat)
    add_member(cfg, "m", hidden_size=128, ffn_size=256, num_layers=3, num_heads=4)
    cfg.data.seq_len, cfg.data.batch_size = 64, 32
    cfg.optimizer.grad_accum_steps = grad_accum
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_axes
    stage = budgets(cfg)[0]
    mesh = sharding.make_mesh(cfg.mesh)
    abstract, compiled = plan.compile_train_step(cfg, stage, mesh)
    counted = collectives.hlo_collectives(compiled.as_text())
    without_accum = cfg.copy_and_resolve_references()
    without_accum.optimizer.grad_accum_steps = 1
    return (counted, plan.analytic_collectives(cfg, stage, abstract.params, mesh),
            plan.analytic_collectives(without_accum, stage, abstract.params, mesh))


@pytest.mark.parametrize("mesh_axes,grad_accum,remat", [((1, 8, 1), 4, "none"), ((2, 2, 2), 4, "full")],
                         ids=["fsdp8-accum4", "data2-fsdp2-tensor2-accum4-remat"])
def test_analytic_traffic_tracks_the_compiled_step(devices8, mesh_axes, grad_accum, remat):
    counted, analytic, ignoring_accum = _compiled_and_analytic(mesh_axes, grad_accum, remat)
    compiled = sum(v["traffic"] for v in counted.values())
    assert 1 / 1.5 <= compiled / analytic["total"] <= 1.5, (compiled, analytic)
    gathers = counted["all-gather"]["traffic"]  # only fsdp parameters are gathered in this step
    assert 1 / 1.5 <= gathers / analytic["fsdp_gather"] <= 1.5, (gathers, analytic)
    assert analytic["total"] == pytest.approx(analytic["fsdp_gather"] + analytic["fsdp_reduce"] + analytic["data"]
                                              + analytic["tensor"])
    # the per-micro-batch gathers and gradient reductions are what the old estimate missed
    assert compiled / ignoring_accum["total"] > 1.5
