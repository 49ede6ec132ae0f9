"""Communication per train step: counted in the compiled HLO, and estimated analytically.

`hlo_collectives(compiled.as_text())` walks the compiled module's call graph from ENTRY, multiplying
by the known trip count of every `while` (the layer scan runs its body L times), and sums for each
collective kind (all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute):
  count   executions per step,
  bytes   sizes of the full buffers involved (all-gather: the gathered result; reduce-scatter: the
          unscattered input; others: the operand),
  traffic bytes one device sends with a ring algorithm over its replica group of size g:
          all-gather/reduce-scatter/all-to-all (g-1)/g * bytes, all-reduce 2(g-1)/g * bytes,
          collective-permute bytes.

`analytic_traffic` estimates the same per-device traffic from the shapes alone (ZeRO-3/FSDP + Megatron
tensor parallelism, with the micro-batch loop and the lowering choices XLA makes for our step), so
`plan` can show both, and their ratio, before anyone rents a pod.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple


KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_COMP_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([a-z][a-z0-9\-]*)\(")
_CALLEE = re.compile(r"\b(body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def _array_bytes(type_text: str) -> list[float]:
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype in _DTYPE_BYTES:
            out.append(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d))
    return out


def _group_size(line: str) -> int:
    """Devices in one replica group, from any of the three HLO spellings of replica_groups."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", line)
    if m:  # mesh['axis_0'=2,'axis_1'=4], device_ids=(...) {'axis_0'}
        sizes = {k: int(v) for k, v in re.findall(r"'(\w+)'=(\d+)", m.group(1))}
        return math.prod(sizes[a] for a in re.findall(r"'(\w+)'", m.group(2)))
    m = re.search(r"replica_groups=\[([\d,]+)\]<=", line)
    if m:  # iota form [num_groups, group_size]<=[...]
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
    if m:
        return len([x for x in m.group(1).split(",") if x])
    m = re.search(r"source_target_pairs=", line)
    return 2 if m else 1


def _split_computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        if current is None:
            m = _COMP_HEADER.match(line)
            if m:
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    entry = current
        elif line.strip() == "}":
            current = None
        else:
            comps[current].append(line)
    return comps, entry


def hlo_collectives(hlo_text: str) -> dict[str, dict[str, float]]:
    """{kind: {"count", "bytes", "traffic"}} per execution of the module (see the module docstring)."""
    comps, entry = _split_computations(hlo_text)
    totals = {k: {"count": 0, "bytes": 0.0, "traffic": 0.0} for k in KINDS}
    if entry is None:
        return totals
    multiplicity: dict[str, int] = {}

    def visit(name: str, times: int, depth: int = 0) -> None:
        if name not in comps or depth > 64:
            return
        multiplicity[name] = multiplicity.get(name, 0) + times
        for line in comps[name]:
            trip = _TRIP.search(line)
            for role, callee in _CALLEE.findall(line):
                visit(callee, times * (int(trip.group(1)) if trip and role == "body" else 1), depth + 1)
            for group in _BRANCHES.findall(line):
                for callee in re.findall(r"%?([\w.\-]+)", group):
                    visit(callee, times, depth + 1)

    visit(entry, 1)
    for name, times in multiplicity.items():
        for line in comps[name]:
            m = _INSTR.match(line)
            if not m:
                continue
            type_text, op = m.group(1), m.group(2)
            kind = op[:-len("-start")] if op.endswith("-start") else op
            if kind not in totals:
                continue
            sizes = _array_bytes(type_text)
            if not sizes:
                continue
            # async *-start results are (operands..., results..., context): the largest buffer is the
            # gathered/permuted one; all-reduce(-start) may reduce several operands at once.
            size = sum(sizes) if kind == "all-reduce" else (max(sizes) if op.endswith("-start") else sum(sizes))
            g = _group_size(line)
            if kind == "reduce-scatter":
                size *= g  # the result is the scattered piece; the reduced buffer is g times larger
            factor = {"all-reduce": 2 * (g - 1) / g, "collective-permute": 1.0}.get(kind, (g - 1) / g)
            t = totals[kind]
            t["count"] += times
            t["bytes"] += times * size
            t["traffic"] += times * size * factor
    return totals


class ParamShard(NamedTuple):
    """One parameter as `analytic_traffic` sees it."""

    bytes: int        # this device's shard (float32 storage)
    fsdp_split: bool  # split over the fsdp axis (so all-gathered before use)
    per_layer: bool   # stacked on the `layers` axis (used inside the layer scan)


def analytic_traffic(model_cfg: Any, mesh_shape: dict[str, int], batch_size: int, seq_len: int,
                     params: list[ParamShard], *, grad_accum_steps: int = 1,
                     backend: str = "tpu") -> dict[str, float]:
    """Per-device bytes sent per train step (ring algorithms), modelled on what XLA compiles for our
    step (checked against `hlo_collectives` in tests/test_model_collectives.py).

    A = grad_accum_steps micro-batches run in a loop (trainer.make_train_step), and the loop keeps
    everything that happens inside the layer scan: per micro-batch, every per-layer parameter split
    over fsdp is all-gathered for the forward, again for the backward and, with remat_policy="full",
    a third time for the recomputed forward; its gradient is reduced before it is added to the
    (sharded) accumulator. The other parameters (embedding, LM head, final norm) are loop invariant,
    so XLA hoists their gathers out of the loop: two per step whatever A is.
      fsdp_gather:  shard * (f - 1) per gather
      fsdp_reduce:  A * shard * (f - 1) as reduce-scatters (TPU/GPU). XLA:CPU has no reduce-scatter:
                    it all-reduces the whole gradient and slices it, twice the traffic. Parameters
                    not split over fsdp are all-reduced over it: A * 2 * shard * (f - 1) / f.
      data:         the gradient shard all-reduced over the data axis per micro-batch:
                    A * 2 * shard * (d - 1) / d.
      tensor:       per layer and micro-batch, the [b, T, D] activations are all-reduced after the
                    o_proj and down_proj (forward), after the input gradients of q, k and v (three:
                    our projections are separate matmuls and XLA reduces each) and of gate and up
                    (two) in the backward, and after o/down again when the block is recomputed; plus
                    the vocab-parallel embedding (forward) and the LM head's input gradient. Each is
                    2 (t - 1) / t * b T D bytes, with b the micro-batch rows per device. Activations
                    are in the compute dtype; XLA:CPU computes bfloat16 matmuls in float32, so on
                    "cpu" they are 4 bytes whatever model.dtype says.
    backend: "cpu" models XLA:CPU's lowering (what `plan` compiles on forced host devices);
    anything else the accelerators'.
    """
    d, f, t = (mesh_shape.get(a, 1) for a in ("data", "fsdp", "tensor"))
    a = int(grad_accum_steps)
    cpu = backend == "cpu"
    recompute = model_cfg.remat_policy == "full"
    gather = reduce = data = 0.0
    for p in params:
        if p.fsdp_split:
            gathers = a * (3 if recompute else 2) if p.per_layer else 2
            gather += gathers * p.bytes * (f - 1)
            reduce += a * p.bytes * (f - 1) * (2 if cpu else 1)
        else:
            reduce += a * 2 * p.bytes * (f - 1) / f
        data += a * 2 * p.bytes * (d - 1) / d
    act_bytes = 4 if cpu or model_cfg.dtype != "bfloat16" else 2
    per_layer = 2 + 5 + (2 if recompute else 0)
    activations = (batch_size // (d * f)) * seq_len * model_cfg.hidden_size * act_bytes  # summed over micro-batches
    tensor = (model_cfg.num_layers * per_layer + 2) * 2 * (t - 1) / t * activations
    out = {"fsdp_gather": gather, "fsdp_reduce": reduce, "fsdp": gather + reduce, "data": data, "tensor": tensor}
    return {**{k: float(v) for k, v in out.items()}, "total": float(gather + reduce + data + tensor)}
