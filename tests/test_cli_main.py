"""The command line: --help everywhere, one table of flags per subcommand, entry points, one-line errors."""

import importlib
import json
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO, run_cli
from jaxgrow import config as config_lib
from jaxgrow.cli import flags as cli_flags, main


def cli(*args: str, module: str = "jaxgrow.main") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "HOME": str(REPO)})


def test_help_lists_commands_and_each_command_lists_its_flags():
    proc = cli("--help", module="jaxgrow")  # `python -m jaxgrow` is the same command
    assert proc.returncode == 0, proc.stderr
    for command in cli_flags.COMMANDS:
        assert f"\n  {command} " in proc.stdout
    proc = cli("sample", "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in cli_flags.COMMAND_FLAGS["sample"]:
        assert f"--{flag}" in proc.stdout
    assert "--config" not in proc.stdout and "--hf" not in proc.stdout
    assert "(default: 40)" in proc.stdout  # max_new_tokens


@pytest.mark.parametrize("command", list(cli_flags.COMMAND_FLAGS))
def test_every_subcommand_has_help(command):
    text = cli_flags.help_text(command)
    assert text.startswith(f"usage: jaxgrow {command} ")
    for flag in cli_flags.COMMAND_FLAGS[command]:
        assert f"  --{flag} " in text


def test_every_jaxgrow_flag_belongs_to_some_command():
    used = {f for flags in cli_flags.COMMAND_FLAGS.values() for f in flags}
    assert cli_flags.jaxgrow_flags() == used


def test_a_flag_of_another_command_is_a_one_line_error():
    proc = cli("train", "--config", "configs/tiny.py", "--workdir", "/nonexistent/never", "--prompt", "x")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("jaxgrow: error: --prompt does not apply to `train` (it is a flag of: sample); "
                                   "`train` takes --config, --workdir")
    proc = cli("export", "--workdir", "w", "--out", "o", "--config", "configs/tiny.py", "--config.seed=1")
    assert proc.returncode == 2 and "--config does not apply to `export`" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_console_script_points_at_the_cli():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["jaxgrow"].split(":")
    assert getattr(importlib.import_module(module), func) is main.run


def test_bad_tasks_file_is_a_one_line_error(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "config.json").write_text(config_lib.base_config().to_json())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": ["x", "y"], "answer": 1}\n{"context": "b", "choices": "xy"}\n')
    proc = run_cli("evaluate", "--workdir", str(work), "--tasks", str(bad))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("jaxgrow: error: --tasks:") and f"{bad}:2" in line
    missing = run_cli("evaluate", "--workdir", str(work), str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr.strip().splitlines()[-1]
    assert not (work / "eval.json").exists()
    assert json.loads((work / "config.json").read_text())["seed"] == 0
