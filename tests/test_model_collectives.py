"""The HLO collective counter on a hand-written module: while trip counts, the three replica-group
spellings, async starts, reduce-scatter sizes."""

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
