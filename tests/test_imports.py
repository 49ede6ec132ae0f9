"""The package's shape: wings with one concern each, importing only wings below them; inside the data wing calls
run one way (pipeline -> corpus -> store -> shards -> tokenizers -> formats); no import cycles."""

import ast
from pathlib import Path

from conftest import REPO

PKG = REPO / "jaxgrow"
REAL_REPO = REPO  # (a test below plants a copy of the package and repoints REPO and PKG for its duration)

# Wing -> its level; a module may import modules of its own wing or of a lower level only.
# cli -> family -> (train, eval, serve, interop) -> (expand, prune, data) -> model -> storage -> config
# (expansion and pruning read THE parameter layout, so the model wing sits just below expand, prune and data)
WING_LEVEL = {"cli": 6, "family": 5, "train": 4, "eval": 4, "serve": 4, "interop": 4, "expand": 3, "prune": 3,
              "data": 3, "model": 2, "storage": 1, "config": 0}
# Inside the data wing: a module imports only the ones after it in this list.
DATA_ORDER = ("tokenize", "pipeline", "corpus", "store", "shards", "tokenizers", "formats")
# Entry points at the top level; each only re-exports a wing's module.
TOP_LEVEL_ALIASES = {"jaxgrow.main", "jaxgrow.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def jaxgrow_imports(path: Path) -> set[str]:
    """jaxgrow modules a file imports (anywhere in it, lazy imports included)."""
    out = set()
    tree = ast.parse(path.read_text())
    shims = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    skip = {id(n) for shim in shims for n in ast.walk(shim)}  # lazy re-exports of a package's own modules
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("jaxgrow")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxgrow"):
            for a in node.names:  # `from jaxgrow.data import shards` names a module; `from x import f`, a name
                sub = f"{node.module}.{a.name}"
                is_module = (REPO / (sub.replace(".", "/") + ".py")).exists() or (REPO / sub.replace(".", "/")).is_dir()
                out.add(sub if is_module else node.module)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): jaxgrow_imports(p) - {module_name(p)} for p in PKG.rglob("*.py")}


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_sits_in_one_wing():
    for name in graph():
        if name == "jaxgrow" or name in TOP_LEVEL_ALIASES:
            continue
        assert wing(name) in WING_LEVEL, f"{name} is in no wing; wings: {sorted(WING_LEVEL)}"


def test_wings_import_only_wings_below_them():
    bad = []
    for name, deps in graph().items():
        if name == "jaxgrow" or name in TOP_LEVEL_ALIASES:
            continue
        for dep in deps:
            if dep == "jaxgrow" or wing(dep) == wing(name):
                continue
            assert dep not in TOP_LEVEL_ALIASES, f"{name} imports the alias {dep}; import its wing's module"
            if WING_LEVEL[wing(dep)] >= WING_LEVEL[wing(name)]:
                bad.append(f"{name} -> {dep}")
    assert not bad, "imports that do not go down the wing order: " + "; ".join(sorted(bad))


def test_data_layer_flows_one_way():
    g = graph()
    for name in DATA_ORDER:
        deps = {d.split(".")[2] for d in g[f"jaxgrow.data.{name}"] if d.startswith("jaxgrow.data.")}
        allowed = set(DATA_ORDER[DATA_ORDER.index(name) + 1:])
        assert deps <= allowed, f"jaxgrow.data.{name} imports {sorted(deps - allowed)}, which come before it"
    assert {p.stem for p in (PKG / "data").glob("*.py")} - {"__init__"} == set(DATA_ORDER)


def test_aliases_only_reexport():
    for alias in TOP_LEVEL_ALIASES:
        path = REPO / (alias.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defs, f"{alias} defines {[d.name for d in defs]}; an alias only re-exports"


def test_experiments_do_not_need_the_pipeline_for_benchmarks():
    for script in ("bench_train.py", "bench_expand.py", "expansion_deviation.py", "make_tasks.py"):
        assert "jaxgrow.family.pipeline" not in jaxgrow_imports(REPO / "experiments" / script), script


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in g.get(node, ()):
            if dep not in g or dep.startswith(node + ".") or node.startswith(dep + "."):
                continue  # a package and its own modules
            assert state.get(dep) != 1, " -> ".join(path + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in g:
        if node not in state:
            visit(node, [node])


def test_a_planted_upward_import_is_caught(tmp_path, monkeypatch):
    """The wing test itself: an eval module importing the family pipeline must fail it."""
    import shutil

    fake = tmp_path / "repo"
    shutil.copytree(PKG, fake / "jaxgrow")
    (fake / "jaxgrow" / "eval" / "planted.py").write_text("from jaxgrow.family import pipeline\n")
    monkeypatch.setattr(__import__(__name__), "REPO", fake, raising=False)
    monkeypatch.setitem(globals(), "REPO", fake)
    monkeypatch.setitem(globals(), "PKG", fake / "jaxgrow")
    try:
        test_wings_import_only_wings_below_them()
    except AssertionError as e:
        assert "jaxgrow.eval.planted -> jaxgrow.family.pipeline" in str(e)
    else:
        raise AssertionError("an upward import was not caught")


# ------------------------------------------------------------------------------------------------ one home per concept


def _private_uses(path: Path) -> list[str]:
    """`from jaxgrow.x import _name` and `module._name` where `module` is a jaxgrow module imported by the file."""
    tree = ast.parse(path.read_text())
    modules, out = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxgrow"):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    out.append(f"from {node.module} import {a.name}")
                sub = f"{node.module}.{a.name}"
                if (REAL_REPO / (sub.replace(".", "/") + ".py")).exists() or (REAL_REPO / sub.replace(".", "/")).is_dir():
                    modules.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("jaxgrow")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            out.append(f"{node.value.id}.{node.attr}")
    return out


def test_no_module_uses_another_modules_private_names():
    pkg = REAL_REPO / "jaxgrow"
    bad = {str(p.relative_to(REAL_REPO)): uses for p in [*pkg.rglob("*.py"), *(REAL_REPO / "experiments").glob("*.py")]
           if (uses := _private_uses(p))}
    assert not bad, f"private names used across modules (make them public or move the code): {bad}"


def test_no_function_in_the_package_is_over_80_lines():
    long = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, f"functions over 80 lines: {long}"


def test_the_package_top_level_holds_only_the_entry_point_config_and_storage():
    top = {p.name for p in PKG.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert top <= {"main.py", "config.py", "storage.py"}, top


def test_the_cli_main_module_is_thin():
    assert len((PKG / "cli" / "main.py").read_text().splitlines()) <= 300


def test_experiments_use_the_installed_package_not_sys_path_or_the_cli():
    for script in sorted((REPO / "experiments").glob("*.py")):
        text = script.read_text()
        assert "sys.path" not in text, f"{script.name} edits sys.path; the package is installed"
        assert not {m for m in jaxgrow_imports(script) if m.startswith("jaxgrow.cli")}, \
            f"{script.name} imports the CLI; call the package's wings"
