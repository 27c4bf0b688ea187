"""The store's format is spelled in one module: ``trajhook/store/format.py`` names every group, dataset and
attribute, and the other store modules use its constants; and the store's modules import one another in
one direction only (issue 23). Both read the source with ``ast``, so they hold for code paths no other
test runs.
"""

import ast
from pathlib import Path

STORE = Path(__file__).resolve().parents[1] / "trajhook" / "store"
# The store's modules, lowest first: each may import only modules before it (as store/__init__.py lists them).
LAYERS = ("format", "lock", "h5", "salvage", "reader", "writer", "repair")
FILES = {f"trajhook.store.{path.stem}" for path in STORE.glob("*.py")}


def _docstrings(tree: ast.AST) -> set[int]:
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }


def format_names() -> dict[str, str]:
    """format.py's module-level string constants (``STEPS = "steps"``, ...): name -> value."""
    names = {}
    for node in ast.parse((STORE / "format.py").read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            names[node.targets[0].id] = node.value.value
    return names


def test_format_names_every_dataset_group_and_attribute_of_a_store(tmp_path):
    """The constants are the store's real names: a store written by the writer holds exactly these groups
    and datasets (besides the probes' own), and these root attributes."""
    import h5py
    import numpy as np

    from trajhook.probes.base import OutputSpec
    from trajhook.store import StoreWriter

    names = format_names()
    schema = {"p": {"out": OutputSpec("out", (2,), np.dtype("float32"))}}
    StoreWriter(tmp_path / "run.h5", schema, {"p": {"grid": np.zeros(2)}}, session={"host": "vm"}).close()
    with h5py.File(tmp_path / "run.h5", "r") as file:
        found: list[str] = []
        file.visit(found.append)
        attrs = set(file.attrs) | set(file["static/p"].attrs) | set(file["checksums/records"].attrs)
    per_probe = {"probes/p", "probes/p/out", "static/p", "static/p/grid"}
    per_table = {"checksums/records", "checksums/scalars", "checksums/events", "checksums/scalar_names"}
    attributes = {v for k, v in names.items() if k.endswith("_ATTR")}
    assert set(found) - per_probe - per_table == set(names.values()) - attributes
    assert attrs == attributes


def test_only_format_py_spells_a_store_name():
    """No store module but format.py holds a string equal to one of format.py's names, or a path that starts
    with one (``"scalars/step"``, ``f"probes/{probe}"``): they import the constant or naming function."""
    names = set(format_names().values())
    assert {"steps", "committed", "scalars/step", "sessions/info", "trajhook_format", "columns"} <= names
    prefixes = tuple(f"{name}/" for name in names)
    found = []
    for path in sorted(STORE.glob("*.py")):
        if path.name == "format.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) and id(node) not in docstrings else None
            if isinstance(text, str) and (text in names or text.startswith(prefixes)):
                found.append(f"{path.name}:{node.lineno} {text!r}")
    assert found == [], f"store names spelled outside store/format.py: {found}"


def _store_module(dotted: str) -> str | None:
    """``"trajhook.store.h5"`` -> ``"h5"``, ``"trajhook.store"`` (the package) -> ``"__init__"``, else None."""
    parts = dotted.split(".")
    return (parts[2] if len(parts) > 2 else "__init__") if parts[:2] == ["trajhook", "store"] else None


def test_store_modules_import_only_lower_ones():
    """Also imports inside functions count: h5.py imported repair.py inside corrupt_error, a circle
    h5 -> repair -> writer -> h5 that module-level checks (tests/test_install.py) do not see."""
    assert sorted(LAYERS) == sorted(p.stem for p in STORE.glob("*.py") if p.stem != "__init__")
    order = {**{name: level for level, name in enumerate(LAYERS)}, "__init__": len(LAYERS)}  # the package: all
    upward = []
    for level, module in enumerate(LAYERS):
        for node in ast.walk(ast.parse((STORE / f"{module}.py").read_text())):
            if isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:  # `from trajhook.store import h5` names h5
                imported = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in FILES]
                imported = imported or [node.module]
            else:
                continue
            for target in filter(None, map(_store_module, imported)):
                if order[target] >= level:
                    upward.append(f"{module}.py:{node.lineno} imports trajhook.store.{target}")
    assert upward == [], f"store modules importing their own level or above (order {LAYERS}): {upward}"
