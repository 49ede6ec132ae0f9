"""Goodput with the workdir in a bucket: the checkpoint share of wall time with blocking and with asynchronous
saves, and the compile share of a resumed stage with and without the persistent compilation cache.

    python experiments/bench_goodput_remote.py [--config configs/family_cpu.py] [--budget_scale 0.25]
        [--latency_ms 50] [--runs blocking,async,cached,uncached] [--out experiments/results/cpu/bench_goodput_remote]

Starts a GCS emulator (tests/gcs_emulator.py: gcp-storage-emulator with the generation headers real GCS sends)
and a latency-injecting proxy (experiments/latency_proxy.py, `--latency_ms` per request) in front of it, and runs
the family with its workdir gs://bench/<run> through the proxy (gcsfs and tensorstore both), up to four times
(`--runs` picks them; the resumed runs take their stage budgets from the config):
    blocking   checkpoint.async_save_remote=False: every save uploads before the next step
    async      the default on gs://: training goes on while the previous step uploads
    cached     SIGTERM in the middle of the last stage, then the same command (W's compile cache: a local
               directory keyed by the workdir, as for any bucket workdir)
    uncached   the same with compile_cache_dir=none
and prints, from the goodput records each run writes (train/goodput.py): the checkpoint share of wall time
(blocking vs async) and the compile share of the resumed run (cached vs uncached). Raw: <out>.json / <out>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common
from latency_proxy import ProxyProcess

REPO = common.REPO


def run(args: list[str], env: dict, log) -> tuple[int, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxgrow.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True)
    log.write(f"$ jaxgrow {' '.join(args)}\n{proc.stderr[-4000:]}\n(exit {proc.returncode})\n\n")
    log.flush()
    return proc.returncode, time.perf_counter() - t0


def goodput_of(workdir: str, env: dict) -> list[dict]:
    """The per-stage goodput records of a workdir's metrics (a bucket workdir writes metrics/NNNNN.jsonl parts)."""
    code = ("import json, sys\nfrom jaxgrow import storage\nrecords, _ = storage.read_metrics(sys.argv[1])\n"
            "print(json.dumps([r for r in records if 'goodput' in r]))\n")
    out = subprocess.run([sys.executable, "-c", code, workdir], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def stage_steps(config: str, budget_scale: float) -> tuple[int, int, int]:
    """(index of the last stage, steps of the stages before it, its steps): the family's stage budgets from the config
    alone (the same rule `train` applies)."""
    from jaxgrow.family import budgets  # noqa: PLC0415

    cfg = common.load_config(config)
    cfg.budget_scale = budget_scale
    st = budgets.budgets(cfg)
    return len(st) - 1, sum(s.steps for s in st[:-1]), st[-1].steps


def shares(records: list[dict], stages: set[int] | None = None) -> dict:
    """Seconds by bucket summed over the given stages' records (each record is a stage's whole process up to it, so
    the per-stage deltas are taken)."""
    prev = {"wall_seconds": 0.0, "seconds": {}}
    total: dict = {}
    wall = 0.0
    for r in records:
        g = r["goodput"]
        delta = {k: v - prev["seconds"].get(k, 0.0) for k, v in g["seconds"].items()}
        dwall = g["wall_seconds"] - prev["wall_seconds"]
        prev = g
        if stages is not None and r["stage"] not in stages:
            continue
        wall += dwall
        for k, v in delta.items():
            total[k] = total.get(k, 0.0) + v
    return {"wall_seconds": wall, "seconds": total, "fractions": {k: v / wall for k, v in total.items()} if wall else {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/family_cpu.py")
    parser.add_argument("--budget_scale", type=float, default=0.25)
    parser.add_argument("--latency_ms", type=float, default=50.0)
    parser.add_argument("--checkpoint_every", type=int, default=25)
    parser.add_argument("--out", default="experiments/results/cpu/bench_goodput_remote")
    parser.add_argument("--runs", default="blocking,async,cached,uncached",
                        help="which of the four runs (comma-separated): blocking,async (checkpoint share), "
                             "cached,uncached (compile share of a resumed stage)")
    args = parser.parse_args()
    runs = set(args.runs.split(","))
    if not runs or runs - {"blocking", "async", "cached", "uncached"}:
        raise SystemExit(f"error: --runs={args.runs}: choose from blocking,async,cached,uncached")
    bucket = "bench"
    emulator, port = common.start_gcs_emulator(bucket)
    proxy = ProxyProcess(port, args.latency_ms)
    url = f"http://127.0.0.1:{proxy.port}"
    env = dict(os.environ, STORAGE_EMULATOR_HOST=url, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
               TENSORSTORE_GCS_HTTP_URL=url, GOOGLE_AUTH_TOKEN_FOR_TESTING="x", JAX_PLATFORMS="cpu",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    base = ["--config", args.config, f"--config.budget_scale={args.budget_scale}", "--config.log.progress=False",
            f"--config.checkpoint.every_steps={args.checkpoint_every}"]
    result: dict = {"config": args.config, "budget_scale": args.budget_scale, "latency_ms": args.latency_ms,
                    "checkpoint_every": args.checkpoint_every, "runs": sorted(runs)}
    log = open(args.out + ".log", "w")
    try:
        for name, extra in (("blocking", ["--config.checkpoint.async_save_remote=False"]), ("async", [])):
            if name not in runs:
                continue
            w = f"gs://{bucket}/{name}"
            code, wall = run([*base, *extra, "--workdir", w], env, log)
            assert code == 0, f"{name} run failed (see {args.out}.log)"
            g = shares(goodput_of(w, env))
            result[name] = {"wall_s": wall, "goodput": g, "checkpoint_share": g["fractions"].get("checkpoint")}
            print(f"{name}: {wall:.0f}s wall, checkpoint share {100 * g['fractions']['checkpoint']:.1f}%", flush=True)
        # the resumed stage: SIGTERM in the middle of the last stage, then the same command
        last_stage = None
        for name, extra in (("cached", []), ("uncached", ["--config.compile_cache_dir=none"])):
            w = f"gs://{bucket}/{name}"
            if name not in runs:
                continue
            last_stage, steps_before, last_steps = stage_steps(args.config, args.budget_scale)
            stop_at = steps_before + last_steps // 2
            code1, wall1 = run([*base, *extra, "--workdir", w], {**env, "JAXGROW_FAULT": f"train_step:{stop_at}:TERM"},
                               log)
            assert code1 == 143, f"{name}: the preempted run exited {code1}"
            code2, wall2 = run([*base, *extra, "--workdir", w], env, log)
            assert code2 == 0, f"{name} resume failed"
            g = shares(goodput_of(w, env)[-1:], {last_stage})  # the resumed process's record of the last stage
            result[name] = {"first_wall_s": wall1, "resumed_wall_s": wall2, "resumed_goodput": g,
                            "resumed_compile_s": g["seconds"].get("compile"),
                            "resumed_compile_share": g["fractions"].get("compile")}
            print(f"{name}: resumed run {wall2:.0f}s wall, compile {g['seconds'].get('compile', 0):.1f}s "
                  f"({100 * g['fractions'].get('compile', 0):.1f}%)", flush=True)
    finally:
        proxy.close()
        emulator.terminate()
        log.close()
    if "blocking" in result and "async" in result:
        result["checkpoint_share_blocking_over_async"] = (result["blocking"]["checkpoint_share"]
                                                          / max(result["async"]["checkpoint_share"], 1e-9))
    if "cached" in result and "uncached" in result:
        result["resumed_compile_s_uncached_over_cached"] = (result["uncached"]["resumed_compile_s"]
                                                            / max(result["cached"]["resumed_compile_s"], 1e-9))
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if "_over_" in k}, indent=1))


if __name__ == "__main__":
    main()
