"""logs.py: metrics.jsonl and TensorBoard scalars at the right step."""

import json
import struct

from tensorboardX.proto import event_pb2

from jaxgrow import storage
from jaxgrow.train import logs


def read_scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from TFRecord event files (length, crc, payload, crc per record)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_scalars_are_written_at_the_family_step(tmp_path):
    log = logs.MetricsLog(tmp_path, enabled=True)
    log.write({"stage": 0, "member": "small", "step_offset": 0, "step": 10, "loss": 5.0, "lr": 1e-3})
    log.write({"stage": 0, "member": "small", "step_offset": 0, "step": 20, "loss": 4.0, "lr": 1e-3})
    log.write({"stage": 1, "member": "big", "step_offset": 20, "step": 10, "loss": 3.5, "finite": True})
    log.write({"stage": 1, "member": "big", "step_offset": 20, "step": 10, "eval_loss": 3.25})
    log.close()
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["small/loss"] == [(10, 5.0), (20, 4.0)]
    assert scalars["big/loss"] == [(30, 3.5)]  # the second stage continues after the first's 20 steps
    assert scalars["big/eval_loss"] == [(30, 3.25)]
    assert not any(tag.endswith(("/step", "/step_offset", "/stage", "/finite")) for tag in scalars)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20, 10, 10] and lines[-1]["eval_loss"] == 3.25


def test_disabled_log_writes_nothing(tmp_path):
    log = logs.MetricsLog(tmp_path, enabled=False)
    log.write({"step": 1, "loss": 1.0})
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_remote_metrics_survive_a_restart_and_tensorboard_is_uploaded(s3_emulator, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem()
    run = "s3://jaxgrow-test/run"
    first = logs.MetricsLog(run, enabled=True)
    first.write({"stage": 0, "member": "small", "step": 10, "loss": 5.0})
    # every write is in the bucket at once (a kill after it loses nothing), with no close()
    records, torn = storage.read_metrics(run)
    assert [r["step"] for r in records] == [10] and torn == 0
    assert fs.ls(f"{run}/metrics") == ["jaxgrow-test/run/metrics/00000.jsonl"]
    first.close()
    second = logs.MetricsLog(run, enabled=True)  # a resumed process starts the next part: the first is never rewritten
    second.write({"stage": 0, "member": "small", "step": 20, "loss": 4.0})
    second.close()
    records, _ = storage.read_metrics(run)
    assert [(r["step"], r["loss"]) for r in records] == [(10, 5.0), (20, 4.0)]
    assert sorted(fs.ls(f"{run}/metrics")) == ["jaxgrow-test/run/metrics/00000.jsonl",
                                               "jaxgrow-test/run/metrics/00001.jsonl"]
    # a part rolls over after PART_RECORDS records: a write rewrites a bounded object, not the whole history
    third = logs.MetricsLog(run, enabled=True)
    for step in range(logs.MetricsLog.PART_RECORDS + 1):
        third.write({"stage": 1, "member": "large", "step": step, "loss": 3.0})
    third.close()
    records, _ = storage.read_metrics(run)
    assert len(records) == 2 + logs.MetricsLog.PART_RECORDS + 1 and len(fs.ls(f"{run}/metrics")) == 4
    fs.get(f"{run}/tb/", str(tmp_path / "tb"), recursive=True)
    assert sorted(read_scalars(tmp_path / "tb")["small/loss"]) == [(10, 5.0), (20, 4.0)]
