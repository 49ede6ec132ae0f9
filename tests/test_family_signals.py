"""Signals (issue #31 case 3): SIGINT exits 130 and SIGTERM 143, each with its one line and no traceback, at every named
fault point of every command that reaches one, native threads (orbax, tensorstore, XLA, the tokenizers' pool) running
or not; never 139 (the segmentation fault of a KeyboardInterrupt unwinding into the interpreter's shutdown), never 0
(an interrupt swallowed in a gc callback), never killed by the signal with no line. The train loop keeps its graceful
path (a checkpoint at the next step boundary, its own message); a second SIGINT there, and a loop that never reaches a
boundary (the watchdog), end the process at once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO, TINY_FAMILY_ARGS, _cli_env, run_cli
from data_common import make_docs
from jaxgrow.train import checkpoint


pytestmark = pytest.mark.slow

# the cheapest train run that reaches every train point: CUT (1 member of 7 steps), a checkpoint every 2 steps (async,
# so a save's threads are running when the signal comes), started from a template workdir whose data is tokenized
TRAIN_FLAGS = ("--config.checkpoint.every_steps=2", "--config.checkpoint.async_save=True")
GROWN = ("from configs.family_tiny import get_config as base\n\n"
         "def get_config():\n    c = base()\n    del c.members['small']\n"
         "    c.members.medium.position, c.members.large.position = 0, 1\n"
         "    c.budget_scale = 0.15\n    c.log.progress = False\n    return c\n")
CUT = ("from jaxgrow.config import add_member, base_config, model_config\n\n"
       "def get_config():\n    c = base_config()\n"
       "    c.model = model_config(vocab_size=2048, head_dim=32, num_kv_heads=1)\n"
       "    add_member(c, 'cut', hidden_size=64, ffn_size=192, num_layers=2, num_heads=2)\n"
       "    c.budget.largest_tokens = 14_000\n    c.data.eval_batches = 2\n    c.log.progress = False\n    return c\n")
# slowest first, so that the last of the parallel runs are short ones
ORDER = ("report_writing", "member_saving", "checkpoint_saving", "train_step", "pruning", "expanding", "expand_saving",
         "export_writing", "tokenize_unit")
GRACEFUL = {"train_step", "checkpoint_saving"}  # inside the stage loop's window: a checkpoint first, then the exit


def run_many(jobs: list[tuple[tuple, dict]], parallel: int = 3) -> list[subprocess.CompletedProcess]:
    """conftest.run_cli_many with an environment per command line (the fault to inject)."""
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda job: run_cli(*job[0], env=job[1], timeout=300), jobs))


@pytest.fixture(scope="module")
def cut_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("signals-config") / "cut.py"
    path.write_text(CUT)
    return path


@pytest.fixture(scope="module")
def train_template(tmp_path_factory, cut_config) -> Path:
    """A workdir of CUT whose data is tokenized and cached, with no checkpoint yet (killed after its first step)."""
    w = tmp_path_factory.mktemp("signals") / "template"
    proc = run_cli("--config", str(cut_config), *TRAIN_FLAGS, "--workdir", str(w),
                   env={"JAXGROW_FAULT": "train_step:1"})
    assert proc.returncode == -9 and not checkpoint.has_checkpoint(w / "stages" / "0-cut"), proc.stderr[-2000:]
    (w / "lock.json").unlink()  # the killed holder's (taken over with a warning otherwise)
    return w


def _cases(tiny_family: Path, template: Path, cut: Path, tmp: Path) -> dict[str, callable]:
    """point -> make(run_dir) -> the command line that reaches it (its own output directory under run_dir)."""
    grown = tmp / "grown.py"
    grown.write_text(GROWN)
    # the parent run's tokenized data (the same tokenizer): prune's calibration reads it instead of tokenizing text
    data = {p.name.split("_")[0]: str(p) for p in (tiny_family / "data").iterdir()}
    inputs = []
    for i in range(2):
        f = tmp / "inputs" / f"in{i}.jsonl"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_docs(40, seed=i)))
        inputs.append(str(f))
    no_report = tmp / "no_report"
    shutil.copytree(tiny_family, no_report, ignore=shutil.ignore_patterns("report.json", "lock.json"))

    def copy_of(src: Path, d: Path) -> str:
        shutil.copytree(src, d)
        return str(d)

    small, large = str(tiny_family / "members" / "small"), str(tiny_family / "members" / "large")
    expand = lambda d: ("expand", "--config", str(grown), "--from", small, "--workdir", str(d / "w"))  # noqa: E731
    prune = lambda d: ("prune", "--config", str(cut), "--from", large,  # noqa: E731
                       f"--config.data.train_files={data['train']}", f"--config.data.eval_files={data['eval']}",
                       "--workdir", str(d / "w"))
    train = lambda d: ("--config", str(cut), *TRAIN_FLAGS, "--workdir", copy_of(template, d / "w"))  # noqa: E731

    def tokenize(d: Path) -> tuple:
        (d / "tok").mkdir()  # (an existing, empty --out: `tokenize --out` takes its lock there first)
        return ("tokenize", "--inputs", ",".join(inputs), "--out", str(d / "tok"), "--tokenizer",
                str(tiny_family / "tokenizer.json"))

    return {
        "tokenize_unit": tokenize,
        "expanding": expand,
        "expand_saving": expand,
        "pruning": prune,
        "export_writing": lambda d: ("export", "--workdir", str(tiny_family), "--all", "--out", str(d / "hf")),
        "report_writing": lambda d: (*TINY_FAMILY_ARGS, "--workdir", copy_of(no_report, d / "w")),
        "train_step": train,
        "checkpoint_saving": train,
        "member_saving": train,
    }


def check_one_line(proc: subprocess.CompletedProcess, sig: str, graceful: bool) -> str | None:
    """None when the exit is right: 130 / 143, no traceback, one line naming the signal (last), at most one error
    line; else what is wrong."""
    code = {"INT": 130, "TERM": 143}[sig]
    err = proc.stderr
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("jaxgrow: error:")]
    if proc.returncode != code:
        return f"exit {proc.returncode}, not {code}"
    if "Traceback" in err or "Exception ignored" in err or "Fatal Python error" in err:
        return "a traceback"
    if not lines or f"by SIG{sig}" not in lines[-1]:
        return f"last line {lines[-1:]!r} does not name SIG{sig}"
    if graceful:
        if errors or "after saving a checkpoint" not in lines[-1]:
            return f"not the train loop's graceful exit: {lines[-1]!r}"
    elif len(errors) != 1 or errors[0] != lines[-1]:
        return f"{len(errors)} error lines"
    return None


def test_sigint_and_sigterm_at_every_fault_point_exit_130_and_143_with_one_line(tiny_family, train_template,
                                                                                 cut_config, tmp_path):
    cases = _cases(tiny_family, train_template, cut_config, tmp_path)
    assert sorted(cases) == sorted(ORDER)
    jobs, keys = [], []
    for name in ORDER:
        make, point = cases[name], name
        for sig, repeats in (("INT", 3), ("TERM", 1)):
            for k in range(repeats):
                d = tmp_path / "runs" / f"{name}-{sig}-{k}"
                d.mkdir(parents=True)
                jobs.append((make(d), {"JAXGROW_FAULT": f"{point}:1:{sig}"}))
                keys.append((name, sig, k, d))
    procs = run_many(jobs)
    wrong = {}
    for (name, sig, k, d), proc in zip(keys, procs):
        problem = check_one_line(proc, sig, graceful=name in GRACEFUL)
        if problem is not None:
            wrong[f"{name} SIG{sig} #{k}"] = (problem, proc.stderr[-1500:])
    assert not wrong, "\n".join(f"{key}: {problem}\n{err}" for key, (problem, err) in wrong.items())
    # the graceful path saved first; the immediate one left a resumable state: the same command finishes it
    for (name, sig, k, d), proc in zip(keys, procs):
        if name in GRACEFUL:
            assert checkpoint.has_checkpoint(d / "w" / "stages" / "0-cut"), name
    (name, sig, k, d), _ = next(((key, p) for key, p in zip(keys, procs) if key[0] == "expand_saving"))
    again = run_cli(*cases["expand_saving"](d), check=True)
    assert "expanded checkpoint written" in again.stdout
    assert json.loads((d / "w" / "lineage.json").read_text())["complete"]


# ------------------------------------------------------------------------------------------------ the graceful window

_WINDOW = """
import os, signal, sys, threading, time
from jaxgrow.train import faults
faults.install()
with faults.SignalFlag() as flag, flag.window():
    os.kill(os.getpid(), signal.SIG{first})
    time.sleep(0.5)
    print("flag", flag.signum, flush=True)
    {then}
print("not reached", flush=True)
"""


def _window(first: str, then: str, env: dict | None = None) -> subprocess.CompletedProcess:
    code = _WINDOW.format(first=first, then=then)
    return subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=_cli_env(env, 1),
                          capture_output=True, text=True, timeout=120)


def test_second_sigint_in_the_window_exits_at_once_and_a_blocked_loop_meets_the_watchdog():
    # a second Ctrl-C while the loop works towards its checkpoint: now, with the one line
    proc = _window("INT", "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)")
    assert proc.returncode == 130 and "flag 2" in proc.stdout, proc.stderr[-2000:]
    assert check_one_line(proc, "INT", graceful=False) is None, proc.stderr
    # SIGTERM, then the main thread never reaches a step boundary (blocked on a lock nobody releases, as in a
    # collective whose peer is gone): the watchdog ends it after JAXGROW_STOP_BOUNDARY_S with its one line
    proc = _window("TERM", "lock = threading.Lock(); lock.acquire(); lock.acquire()",
                   env={"JAXGROW_STOP_BOUNDARY_S": "2"})
    assert proc.returncode == 143 and "flag 15" in proc.stdout, proc.stderr[-2000:]
    assert check_one_line(proc, "TERM", graceful=False) is None, proc.stderr
    assert "no step boundary within 2s" in proc.stderr
