"""The README's quick start is exactly two commands, and CI runs the README's test command."""

import re
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def quick_start_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quick_start_has_exactly_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "python -m jaxgrow.main --config" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert quick_start_commands()[1] in ci_lines


def test_every_requirement_has_an_exact_pin_in_constraints_that_satisfies_its_range():
    from packaging.requirements import Requirement  # noqa: PLC0415

    def lines(name):
        return [line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines()
                if line.split("#")[0].strip()]

    pins = {}
    for line in lines("constraints.txt"):
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        pins[req.name.lower().replace("_", "-")] = spec.version
    for name in ("requirements.txt", "requirements-test.txt", "requirements-hf.txt"):
        for line in lines(name):
            req = Requirement(line)
            assert all(s.operator != "==" for s in req.specifier), f"{name}: {line} (exact pins go in constraints.txt)"
            key = req.name.lower().replace("_", "-")
            assert key in pins, f"{name}: {req.name} has no pin in constraints.txt"
            assert req.specifier.contains(pins[key]), f"constraints.txt {key}=={pins[key]} is outside {name}: {line}"
    for command in quick_start_commands():
        assert command.startswith("pip install -c constraints.txt -e ")


def test_the_public_api_snippet_runs_as_written():
    """The README's Public API block, executed exactly as it stands (a fresh namespace, nothing predefined)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, re.S)
    exec(compile(snippet, "README.md: Public API", "exec"), {"__name__": "readme_snippet"})  # noqa: S102
