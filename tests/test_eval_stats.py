"""Seeds, intervals and verdicts (jaxgrow.stats), epochs per member (jaxgrow.passes), the fitted LR rule
(jaxgrow.lr_fit), and the bad-input exits of experiments/reproduce_paper.py and experiments/lr_sweep.py."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxgrow import config as config_lib
from jaxgrow.eval import comparison, lr_fit, stats
from jaxgrow.family import passes
from jaxgrow.train import schedules
from tests.conftest import REPO


def test_parse_seeds_and_its_refusals():
    assert stats.parse_seeds("0,1,2") == [0, 1, 2]
    assert stats.parse_seeds(" 3 ") == [3]
    for bad, words in (("", "empty"), (" , ", "empty"), ("0,1,0", "repeats seed(s) [0]"), ("a,b", "integers")):
        with pytest.raises(config_lib.InputError, match=words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                           .replace(")", r"\)")):
            stats.parse_seeds(bad)


def test_mean_ci_is_the_student_t_interval():
    x = [4.1, 4.3, 4.0, 4.4]
    s = stats.mean_ci(x)
    lo, hi = scipy_stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=scipy_stats.sem(x))
    assert s["mean"] == pytest.approx(np.mean(x)) and s["n"] == 4
    assert s["ci95"] == pytest.approx([lo, hi])
    assert stats.mean_ci([1.0])["ci95"] is None


@pytest.mark.parametrize("ci,sign,want", [
    ([-0.3, -0.1], -1, "met"), ([0.1, 0.3], -1, "not_met"), ([-0.1, 0.2], -1, "inconclusive"),
    ([0.1, 0.3], 1, "met"), ([-0.3, -0.1], 1, "not_met"), (None, -1, "inconclusive"),
])
def test_verdict_needs_the_interval_to_exclude_the_opposite_sign(ci, sign, want):
    assert stats.verdict({"ci95": ci}, sign) == want


def test_paired_difference_removes_the_shared_seed_effect():
    # seed effects (+-1) dwarf the arm difference (0.05); pairing by seed recovers it with a tight interval
    a, b = [5.0, 6.0, 4.0], [5.05, 6.05, 4.05]
    d = stats.paired(a, b)
    assert d["mean"] == pytest.approx(-0.05) and d["ci95"][1] < 0
    assert stats.verdict(d, -1) == "met"
    unpaired = stats.mean_ci(a)["ci95"]
    assert unpaired[0] < np.mean(b) < unpaired[1]  # unpaired intervals would overlap completely


def test_aggregate_metrics_is_generic_over_metric_names():
    per_seed = [{"eval_loss": 4.0, "tasks/x/acc_norm": 0.3, "bench/new_metric": 1.0, "note": "text", "kl": None},
                {"eval_loss": 4.2, "tasks/x/acc_norm": 0.5, "bench/new_metric": 3.0, "note": "text", "kl": None}]
    agg = stats.aggregate_metrics(per_seed)
    assert set(agg) == {"eval_loss", "tasks/x/acc_norm", "bench/new_metric"}
    assert agg["bench/new_metric"]["mean"] == 2.0 and agg["bench/new_metric"]["ci95"] is not None


def test_epochs_count_a_progressive_lineage_cumulatively():
    stages = [SimpleNamespace(steps=10), SimpleNamespace(steps=20)]
    # 16 windows per step, 1000 windows of 128 tokens in the stream
    n_tokens = 1000 * 128 + 1
    assert passes.epochs_per_member(stages, "progressive", 16, n_tokens, 128) == pytest.approx([0.16, 0.48])
    assert passes.epochs_per_member(stages, "independent", 16, n_tokens, 128) == pytest.approx([0.16, 0.32])
    assert passes.repeat_warning(["a", "b"], [0.5, 0.9], n_tokens) is None
    assert "b: 1.20" in passes.repeat_warning(["a", "b"], [0.5, 1.2], n_tokens)


def test_report_states_the_epochs_each_member_saw(tiny_family):
    report = json.loads((tiny_family / "report.json").read_text())
    epochs = [m["epochs"] for m in report["members"]]
    assert all(e > 0 for e in epochs) and epochs == sorted(epochs)  # a progressive lineage only accumulates
    assert "Epochs" in (tiny_family / "report.md").read_text()


def test_fit_power_recovers_the_exponent_and_brackets_it():
    ns = np.array([1e5, 3e5, 1e6, 3e6])
    exact = lr_fit.fit_power(ns, 0.5 * ns ** -0.3)
    assert exact["alpha"] == pytest.approx(0.3) and exact["a"] == pytest.approx(0.5)
    noisy = lr_fit.fit_power(ns, 0.5 * ns ** -0.3 * np.array([1.1, 0.9, 1.05, 0.97]))
    lo, hi = noisy["alpha_ci95"]
    assert lo < 0.3 < hi and hi - lo > 0
    assert lr_fit.fit_power(ns[:2], [1e-3, 5e-4])["alpha_ci95"] is None


def test_optimal_peak_refines_inside_the_bracket_and_flags_the_edge():
    lrs = lr_fit.log_spaced(1e-3, 1e-1, 5)
    losses = [(np.log(lr) - np.log(0.02)) ** 2 for lr in lrs]  # true optimum 0.02, between grid points
    best = lr_fit.optimal_peak(lrs, losses)
    assert best["peak"] == pytest.approx(0.02, rel=1e-6) and not best["edge"]
    assert lr_fit.optimal_peak(lrs, [1, 2, 3, 4, 5])["edge"]
    with pytest.raises(config_lib.InputError, match="at least 2"):
        lr_fit.log_spaced(1e-3, 1e-2, 1)


def _repro_cfg():
    sys.path.insert(0, str(REPO))
    from configs.repro_small import get_config  # noqa: PLC0415
    return get_config()


def test_a_table_rule_keeps_every_peak_exactly():
    # the first member is trained from scratch the same way in every arm only if its peak survives the rule file
    # bit for bit (a 6-digit table once made the progressive arms' first member differ from the independent one's)
    peaks = [np.float64(0.0068095107738651425), 0.0091650123456789]
    table = lr_fit.rule_lr("table", [98624, 197184], peaks, {})["table"]
    assert [p for _, p in schedules.parse_table(table)] == [float(p) for p in peaks]


def test_rule_file_must_match_the_config_members(tmp_path):
    cfg = _repro_cfg()
    good = {"members": lr_fit.members_signature(cfg), "lr": {"rule": "table", "table": "98624:0.004,787584:0.002"}}
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert lr_fit.load_rule_file(tmp_path / "good.json", cfg)["lr"]["rule"] == "table"
    bad = dict(good, members=good["members"][:2])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(config_lib.InputError, match="was fitted for members"):
        lr_fit.load_rule_file(tmp_path / "bad.json", cfg)


def _script(name, *args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, f"experiments/{name}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args,words", [
    (("--seeds=",), "--seeds is empty"),
    (("--seeds=0,1,0",), "repeats seed(s) [0]"),
    (("--arms=progressive,magic",), "--arms: unknown ['magic']"),
    (("--lr_rule_file=MISMATCH",), "was fitted for members"),
])
def test_reproduce_paper_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    mismatch = tmp_path / "rule.json"
    mismatch.write_text(json.dumps({"members": [{"name": "x", "non_embedding_params": 1}], "lr": {"rule": "table"}}))
    args = [a.replace("MISMATCH", str(mismatch)) for a in args]
    proc = _script("reproduce_paper.py", "--config", "configs/repro_small.py", "--workdir", str(tmp_path / "w"),
                   "--seeds=0,1", *args)  # a later --seeds overrides
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxgrow: error: ") and words in last  # the CLI's one exception boundary
    assert not (tmp_path / "w").exists()  # nothing half-written


@pytest.mark.parametrize("args,words", [
    (("--num_lrs=4",), "at least 5 learning rates"),
    (("--progressive",), "--progressive needs --lr_rule_file"),
    (("--progressive", "--config=configs/tiny.py"), "the config has one member"),
])
def test_lr_sweep_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    proc = _script("lr_sweep.py", "--config", "configs/repro_small.py", "--workdir", str(tmp_path / "w"), *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert words in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()


def test_reproduce_paper_refuses_one_seed(tmp_path):
    proc = _script("reproduce_paper.py", "--config", "configs/repro_small.py", "--workdir", str(tmp_path / "w"),
                   "--seeds=0")
    assert proc.returncode == 2 and "give at least 2 seeds" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()


def test_reproduction_refuses_repeated_data_unless_allowed(tmp_path):
    proc = _script("reproduce_paper.py", "--config", "configs/repro_small.py", "--workdir", str(tmp_path / "w"),
                   "--config.budget_scale=40", "--arms=independent", "--seeds=0,1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "repeats the training data" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_reproduce_paper_with_seeds_writes_claims_with_intervals(tmp_path):
    # One reproduction serves every arm's claims (this test once ran repro_small's four members for three arms and a
    # second test ran family_tiny for the consistency arm; each claim still gets two seeds, the fewest that give an
    # interval, and every field both asserted is asserted here)
    proc = _script("reproduce_paper.py", "--config", "configs/family_tiny.py", "--workdir", str(tmp_path),
                   "--config.budget_scale=0.06", "--config.log.progress=False", "--seeds=0,1",
                   "--arms=progressive,fixed_lr,independent,consistency", "--task_items=8",
                   "--config.data.eval_batches=2", "--bench_suite=piqa,arc_easy", "--bench_limit=4", "--parallel=2",
                   timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = json.loads((tmp_path / "comparison.json").read_text())
    arms = {"progressive", "fixed_lr", "independent", "consistency"}
    assert set(c["arms"]) == arms and c["seeds"] == [0, 1] and c["arms"]["progressive"]["seeds"] == [0, 1]
    assert [m["name"] for m in c["members"]] == ["small", "medium", "large"]
    for m in c["members"]:
        for arm, row in m["arms"].items():
            assert row["eval_loss_ci95"][0] <= row["eval_loss_mean"] <= row["eval_loss_ci95"][1]
            assert row["eval_loss_mean"] > 0 and 0 < row["epochs"] < 1
            assert 0 <= row["tasks/tasks/acc_norm_mean"] <= 1  # downstream metrics aggregated generically
            assert "core/piqa/acc_norm_mean" in row and "core/arc_easy/acc_norm_stderr_mean" in row  # the suite
    # the seeds really differ (else the intervals would be degenerate)
    large = c["members"][-1]["arms"]["independent"]
    assert large["eval_loss_ci95"][1] > large["eval_loss_ci95"][0]
    for arm in arms:
        s = c["arms"][arm]
        assert s["mean_adjacent_kl"]["mean"] > 0 and s["mean_draft_acceptance"]["temperature_0"]["mean"] is not None
    assert c["flops_saved_fraction"]["independent"] == 0.0 and c["flops_saved_fraction"]["consistency"] > 0
    claims = {cl["name"]: cl for cl in c["claims"]}
    assert list(claims)[:7] == ["comparable_quality_at_lower_compute", "adjusted_lr_beats_independent",
                                "adjusted_beats_fixed", "lower_adjacent_kl", "lower_adjacent_kl_at_equal_gap",
                                "higher_draft_acceptance_temperature_0", "higher_draft_acceptance_temperature_1"]
    kl = claims["lower_adjacent_kl (consistency)"]
    assert kl["ci95"][0] <= kl["mean_paired_difference"] <= kl["ci95"][1]
    for cl in c["claims"]:
        assert cl["verdict"] in stats.VERDICTS and len(cl["ci95"]) == 2
    md = (tmp_path / "comparison.md").read_text()
    assert "±" in md and "Claims" in md and (tmp_path / "comparison.png").stat().st_size > 0


def _fake_run(losses, kl, flops, epochs, acc, peaks=(1e-3, 2e-3)):
    members = [{"name": f"m{i}", "eval_loss": l, "kl_to_next": kl if i < len(losses) - 1 else None,
                "kl_from_next": None, "eval_ppl": float(np.exp(l)), "epochs": e, "train_flops": f, "peak_lr": p}
               for i, (l, e, f, p) in enumerate(zip(losses, epochs, flops, peaks))]
    return {"report": {"members": members, "total_train_flops": float(sum(flops)), "lr_rule": "power",
                       "expansion": {"method": "zero"}},
            "eval": {"members": {f"m{i}": {"eval_loss": l, "tasks": {"cont": {"acc_norm": acc, "n": 8}}}
                                 for i, l in enumerate(losses)}}}


SEEDS = [0, 1, 2]
SHIFT = {0: 0.0, 1: 0.3, 2: -0.2}  # a seed effect shared by the arms: pairing by seed removes it


def _fake_arms(fixed_peaks=(1e-3, 1e-3)):
    return {
        "progressive": {s: _fake_run([5 + SHIFT[s], 4.50 + SHIFT[s]], 0.40 + SHIFT[s] / 10, [1, 2], [0.1, 0.4], 0.3)
                        for s in SEEDS},
        "fixed_lr": {s: _fake_run([5 + SHIFT[s], 4.40 + SHIFT[s] + 0.001 * s], 0.5, [1, 2], [0.1, 0.4], 0.3,
                                  peaks=fixed_peaks) for s in SEEDS},
        "independent": {s: _fake_run([5 + SHIFT[s], 4.52 + SHIFT[s] + 0.001 * s], 0.45 + SHIFT[s] / 10, [1, 3],
                                     [0.1, 0.3], 0.25) for s in SEEDS},
    }


def test_compare_pairs_arms_by_seed_and_decides_each_claim(tmp_path):
    c = comparison.compare(_fake_arms(), SEEDS)
    claims = {cl["name"]: cl for cl in c["claims"]}
    assert list(claims) == ["comparable_quality_at_lower_compute", "adjusted_lr_beats_independent",
                            "adjusted_beats_fixed", "lower_adjacent_kl", "lower_adjacent_kl_at_equal_gap"]
    # fixed_lr: 1 - 3/4 = 25% saved; its grown member is ~2.6% below independent: met (upper bound below +0.5%)
    quality = claims["comparable_quality_at_lower_compute"]
    assert quality["arms"] == ["fixed_lr", "independent"] and quality["flops_saved_fraction"] == pytest.approx(0.25)
    assert quality["verdict"] == "met" and quality["ci95"][1] < quality["margin"] == pytest.approx(0.005)
    assert quality["mean_paired_difference"] == pytest.approx(4.40 / 4.52 - 1, abs=2e-3)
    # progressive vs independent: mean loss lower by 0.01 + 0.0005 s in every seed: met
    beats = claims["adjusted_lr_beats_independent"]
    assert beats["verdict"] == "met" and beats["mean_paired_difference"] == pytest.approx(-0.0105, abs=1e-4)
    assert beats["per_member_difference"]["m0"]["mean"] == pytest.approx(0.0)  # the shared first member
    # progressive is 0.05 worse than fixed on mean loss in every seed: not met
    lr = claims["adjusted_beats_fixed"]
    assert lr["verdict"] == "not_met" and lr["mean_paired_difference"] == pytest.approx(0.05 - 0.0005, abs=1e-3)
    assert claims["lower_adjacent_kl"]["verdict"] == "met"  # 0.05 lower in every seed
    gap = claims["lower_adjacent_kl_at_equal_gap"]
    assert gap["verdict"] in stats.VERDICTS and "delta_loss" in gap["regression"]["forward"]
    for cl in claims.values():  # every decided-or-not claim carries its power
        assert cl["min_detectable_effect"] is None or cl["min_detectable_effect"] > 0
    row = c["members"][1]["arms"]["independent"]
    assert row["eval_loss_mean"] == pytest.approx(np.mean([4.52 + SHIFT[s] + 0.001 * s for s in SEEDS]))
    assert row["epochs"] == pytest.approx(0.3) and row["tasks/cont/acc_norm_mean"] == pytest.approx(0.25)
    md = comparison.markdown(c)
    assert "**met**" in md and "**not_met**" in md and "tasks/cont/acc_norm" in md
    comparison.plot(c, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_arms_that_are_the_same_run_by_construction_are_not_applicable():
    # both progressive arms re-warm every member to the same peaks: "adjusted" and "fixed" are one run
    c = comparison.compare(_fake_arms(fixed_peaks=(1e-3, 2e-3)), SEEDS)
    claim = {cl["name"]: cl for cl in c["claims"]}["adjusted_beats_fixed"]
    assert claim["verdict"] == "not_applicable" and "same peak" in claim["reason"]
    assert claim["seeds_to_decide"] is None
    assert "not_applicable" in comparison.markdown(c)


@pytest.mark.slow
def test_lr_sweep_fits_a_rule_that_reproduce_paper_accepts(tmp_path):
    out = tmp_path / "rule.json"
    proc = _script("lr_sweep.py", "--config", "configs/repro_small.py", "--workdir", str(tmp_path / "sweep"),
                   "--config.budget_scale=0.03", "--config.data.eval_batches=2", "--num_lrs=5", "--max_extend=0", "--lr_min=1e-3",
                   "--lr_max=1e-2", "--rule=power", f"--out={out}", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rule = json.loads(out.read_text())
    assert [s["name"] for s in rule["sweep"]] == ["s", "m", "l", "xl"]
    assert all(len(s["eval_loss"]) == 5 and np.isfinite(s["eval_loss"]).all() for s in rule["sweep"])
    assert rule["lr"]["rule"] == "power" and rule["fit"]["alpha_ci95"] is not None  # >= 3 sizes: an interval on alpha
    cfg = lr_fit.apply_rule_file(_repro_cfg(), str(out))
    assert cfg.lr.rule == "power" and cfg.lr.alpha == pytest.approx(rule["fit"]["alpha"])
