"""The package's shape: wings with one concern each, importing only wings below them; inside the data wing calls
run one way (pipeline -> corpus -> store -> shards -> tokenizers -> formats); no import cycles."""

import ast
from pathlib import Path

from conftest import REPO

PKG = REPO / "jaxgrow"

# Wing -> its level; a module may import modules of its own wing or of a lower level only.
# cli -> family -> (train, eval, serve, interop) -> (expand, data) -> model -> storage -> config
# (expansion reads THE parameter layout, so the model wing sits just below expand and data)
WING_LEVEL = {"cli": 6, "family": 5, "train": 4, "eval": 4, "serve": 4, "interop": 4, "expand": 3, "data": 3,
              "model": 2, "storage": 1, "config": 0}
# Inside the data wing: a module imports only the ones after it in this list.
DATA_ORDER = ("tokenize", "pipeline", "corpus", "store", "shards", "tokenizers", "formats")
# Entry points and aliases kept for one release at the top level; each only re-exports a wing's module.
TOP_LEVEL_ALIASES = {"jaxgrow.main", "jaxgrow.__main__", "jaxgrow.schedules", "jaxgrow.hf", "jaxgrow.sampling",
                     "jaxgrow.inference"}


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
