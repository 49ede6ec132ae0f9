"""The package's shape: rooms with one job, data flowing one way (no import cycles)."""

import ast
from pathlib import Path

from conftest import REPO

PKG = REPO / "jaxgrow"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def jaxgrow_imports(path: Path) -> set[str]:
    """jaxgrow modules a file imports (anywhere in it, lazy imports included)."""
    out = set()
    tree = ast.parse(path.read_text())
    shims = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    skip = {id(n) for shim in shims for n in ast.walk(shim)}  # lazy re-exports kept for old import paths
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("jaxgrow")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxgrow"):
            if node.module in ("jaxgrow", "jaxgrow.expand"):
                out |= {f"{node.module}.{a.name}" for a in node.names}
            else:
                out.add(node.module)
    return {m if (REPO / (m.replace(".", "/") + ".py")).exists() or (REPO / m.replace(".", "/")).is_dir()
            else m.rsplit(".", 1)[0] for m in out}


def graph() -> dict[str, set[str]]:
    return {module_name(p): jaxgrow_imports(p) - {module_name(p)} for p in PKG.rglob("*.py")}


def test_library_rooms_do_not_import_the_orchestrator():
    g = graph()
    for name in ("jaxgrow.plan", "jaxgrow.commands", "jaxgrow.hf", "jaxgrow.budgets", "jaxgrow.workdir",
                 "jaxgrow.sampling", "jaxgrow.growth", "jaxgrow.train"):
        assert "jaxgrow.family" not in g[name], name
    assert not g["jaxgrow.hf"] & {"jaxgrow.train", "jaxgrow.model", "jaxgrow.checkpoint", "jaxgrow.sharding"}
    for script in ("bench_train.py", "bench_expand.py", "expansion_deviation.py", "make_tasks.py"):
        assert "jaxgrow.family" not in jaxgrow_imports(REPO / "experiments" / script), script


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in g.get(node, ()):
            if dep in ("jaxgrow", "jaxgrow.expand") or dep.startswith(node + "."):
                continue
            assert state.get(dep) != 1, " -> ".join(path + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in g:
        if node not in state:
            visit(node, [node])
