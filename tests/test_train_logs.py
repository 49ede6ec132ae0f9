"""logs.py: metrics.jsonl and TensorBoard scalars at the right step."""

import json
import struct

from tensorboardX.proto import event_pb2

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
    assert [json.loads(x)["step"] for x in fs.cat(f"{run}/metrics.jsonl").decode().splitlines()] == [10]
    first.close()
    second = logs.MetricsLog(run, enabled=True)  # a resumed process appends after the existing records
    second.write({"stage": 0, "member": "small", "step": 20, "loss": 4.0})
    second.close()
    lines = [json.loads(x) for x in fs.cat(f"{run}/metrics.jsonl").decode().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(10, 5.0), (20, 4.0)]
    fs.get(f"{run}/tb/", str(tmp_path / "tb"), recursive=True)
    assert sorted(read_scalars(tmp_path / "tb")["small/loss"]) == [(10, 5.0), (20, 4.0)]
