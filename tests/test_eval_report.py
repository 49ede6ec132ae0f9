"""report.py: report.json/report.md/plots from stage budgets, evals and metrics.jsonl."""

import json
import re
import types

import numpy as np

from jaxgrow.eval import report


def stage(i, name, steps, flops):
    return types.SimpleNamespace(index=i, name=name, params=1000 * (i + 1), non_embedding_params=600 * (i + 1),
                                 tokens=steps * 64, steps=steps, train_flops=flops, train_flops_per_token=flops / (steps * 64))


def test_report_md_links_its_plots_and_they_are_written(tmp_path):
    cfg = types.SimpleNamespace(mode="progressive", expansion=types.SimpleNamespace(method="zero", depth="identity"),
                                lr=types.SimpleNamespace(rule="constant"), consistency=types.SimpleNamespace(weight=0.0))
    stages = [stage(0, "small", 4, 1e9), stage(1, "big", 6, 3e9)]
    independent = [stage(0, "small", 4, 1e9), stage(1, "big", 10, 5e9)]
    evals = [{"eval_loss": 5.0, "kl_to_next": 0.1, "kl_from_next": 0.2},
             {"eval_loss": 4.0, "kl_to_next": None, "kl_from_next": None}]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for member, offset, flops in (("small", 0, 0.0), ("big", 4, 1e9)):
            for step in (2, 4):
                f.write(json.dumps({"member": member, "stage": 0, "step_offset": offset, "step": step,
                                    "eval_loss": 6.0 - step / 4, "train_flops": flops + step * 2.5e8}) + "\n")
    result = report.build(cfg, stages, evals, independent)
    assert result["flops_saved_fraction"] == 1 - 4e9 / 6e9
    report.write(tmp_path, result, stages, [lambda s: np.full(np.shape(s), 1e-3)] * 2)
    text = (tmp_path / "report.md").read_text()
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(report.PLOTS)
    for link in links:
        assert (tmp_path / link).stat().st_size > 1000  # a real PNG next to report.md
        assert (tmp_path / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text()) == result
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_read_metrics_keeps_the_last_record_after_a_resume(tmp_path):
    lines = [{"stage": 0, "step": 5, "loss": 3.0}, {"stage": 0, "step": 5, "loss": 2.5},
             {"stage": 0, "step": 5, "eval_loss": 2.9}, {"stage": 1, "step": 1, "loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    got = report.read_metrics(tmp_path)
    assert [r.get("loss", r.get("eval_loss")) for r in got] == [2.5, 2.9, 2.0]
