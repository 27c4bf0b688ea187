"""What `pip install trajhook` promises: a light core, numpy 1 or 2, and clear errors for missing extras."""

import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trajhook
from trajhook import TrajhookError

FRAMEWORKS = (
    "procgen",
    "gym3",
    "gymnasium",
    "stable_baselines3",
    "pytorch_lightning",
    "lightning",
    "wandb",
    "tensorboard",
    "transformers",
    "trl",
    "matplotlib",
)


@pytest.mark.timeout(60)
def test_import_trajhook_loads_no_framework():
    code = f"import sys, trajhook; print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="the language-model environment has trl")
def test_language_model_side_runs_on_numpy_2_with_current_hf_libraries():
    import datasets
    import transformers
    import trl

    assert int(np.__version__.split(".")[0]) >= 2, np.__version__
    assert int(transformers.__version__.split(".")[0]) >= 5
    assert trl.__version__ and datasets.__version__
    assert importlib.util.find_spec("procgen") is None  # procgen2 would have forced numpy 1


@pytest.mark.skipif(importlib.util.find_spec("procgen") is not None, reason="procgen is installed here")
def test_maze_probe_without_procgen_names_the_extra_to_install(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(15))
    probe = trajhook.MazeProbe(seed=0)
    with pytest.raises(TrajhookError, match=r"pip install 'trajhook\[maze\]'"):
        trajhook.Recorder(tmp_path / "run.h5", [probe], wandb=False).setup(model)


LIGHT = ("trajhook.analysis", "trajhook.plots", "trajhook.report", "trajhook.serve", "trajhook.integrations")


@pytest.mark.timeout(60)
def test_import_trajhook_loads_no_analysis_plotting_report_or_service_module():
    code = (
        "import sys, trajhook; "
        f"print(sorted(m for m in sys.modules if m.startswith({LIGHT!r}) or m.split('.')[0] in {FRAMEWORKS!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_exports_and_one_version():
    from trajhook.analysis.online import StageTracker
    from trajhook.sinks.base import Sink
    from trajhook.sinks.tensorboard import TensorBoardSink
    from trajhook.sinks.wandb import WandbSink

    assert (trajhook.StageTracker, trajhook.Sink) == (StageTracker, Sink)
    assert (trajhook.WandbSink, trajhook.TensorBoardSink) == (WandbSink, TensorBoardSink)
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = { attr = "trajhook._version.__version__" }' in pyproject
    assert not re.search(r'(?m)^version = "', pyproject)  # no second copy of the number
    assert importlib.metadata.version("trajhook") == trajhook.__version__


BLOCK = """
import sys
BLOCKED = {blocked!r}

class Missing:  # as if the extra were not installed: every import of these modules fails
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
for name in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
    del sys.modules[name]
import torch, trajhook
from trajhook import TrajhookError
path = {path!r}
try:
{action}
except TrajhookError as err:
    print("ERROR", err)
else:
    print("NO ERROR")
"""

STORE = "trajhook.Recorder(path, [trajhook.TensorProbe('p', torch.ones(1, 2))], wandb=False)"

EXTRAS = {
    "maze": (
        ["procgen"],
        "    trajhook.Recorder(path, [trajhook.MazeProbe(seed=0)], wandb=False).setup(torch.nn.Linear(2, 15))",
    ),
    "lightning": (["pytorch_lightning", "lightning"], "    import trajhook.integrations.lightning"),
    "wandb": (["wandb"], "    trajhook.Recorder(path, [trajhook.TensorProbe('p', torch.ones(1, 2))], wandb=True)"),
    "tensorboard": (
        ["tensorboard"],
        "    trajhook.Recorder(path, [trajhook.TensorProbe('p', torch.ones(1, 2))], wandb=False, tensorboard='tb')",
    ),
    "hf": (["transformers"], "    import trajhook.integrations.hf"),
    "sb3": (["stable_baselines3"], "    import trajhook.integrations.sb3"),
    "serve": (
        ["starlette", "uvicorn"],
        f"    with {STORE} as rec:\n        rec.record(torch.nn.Linear(2, 1), 0)\n    from trajhook.cli import main\n"
        "    if main(['serve', path, '--port', '0']):\n        raise TrajhookError('the CLI said why above')",
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_missing_extra_names_its_pip_install(tmp_path, extra):
    blocked, action = EXTRAS[extra]
    code = BLOCK.format(blocked=blocked, path=str(tmp_path / "run.h5"), action=action)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR " in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert f"HINT: pip install 'trajhook[{extra}]'" in proc.stdout + proc.stderr  # the CLI says it on stderr


def _imports() -> dict[str, set[str]]:
    """trajhook module -> the trajhook modules it imports anywhere (module level or inside a function), read
    from the source: a function-level import closes a circle as surely as a module-level one, only later."""
    root = Path(__file__).resolve().parents[1]
    files = {}
    for path in root.glob("trajhook/**/*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        files[name] = path
    graph = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # from . import x, from ..store import y
                    base = package[: len(package) - node.level + 1]
                    module = ".".join([*base, module] if module else base)
                targets |= {f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def test_no_import_circle_and_no_import_running_back_up():
    graph = _imports()
    assert graph["trajhook.recording.recorder"] >= {
        "trajhook.recording.checks",
        "trajhook.recording.probing",
        "trajhook.recording.thread",
    }  # it reads them
    assert "trajhook.analysis.online" in graph["trajhook.probes.base"]  # a function-level import is counted

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph[start])

    circles = sorted(name for name in graph if reaches(name, name, set()))
    assert circles == [], f"modules on an import circle: {circles}"
    upward = sorted(
        f"{name} -> {target}" for name, targets in graph.items() for target in targets if name.startswith(f"{target}.")
    )
    assert upward == [], f"modules importing a package they are inside of: {upward}"


# The store's datasets and groups as a path names them (docs/FORMAT.md); "steps" alone is also a JSON key.
STORE_NAMES = ("committed", "wall_time", "probes/", "static/", "scalars/", "events/", "checksums/", "sessions/")


def test_only_the_store_opens_the_file_and_names_its_datasets():
    """Outside trajhook/store/ no module opens a store with h5py (it may ask h5py its version) nor
    spells a dataset's name: the store's format is known in one room (issue 23)."""
    root = Path(__file__).resolve().parents[1]
    h5py_uses, names = [], []
    for path in sorted(root.glob("trajhook/**/*.py")):
        where = path.relative_to(root)
        if where.parts[:2] == ("trajhook", "store"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "h5py":
                h5py_uses.append(f"{where}:{node.lineno} from h5py import")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "h5py":
                if node.attr != "__version__":
                    h5py_uses.append(f"{where}:{node.lineno} h5py.{node.attr}")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and (node.value in STORE_NAMES[:2] or node.value.startswith(STORE_NAMES[2:]))
            ):
                names.append(f"{where}:{node.lineno} {node.value!r}")
    assert h5py_uses == [], "only trajhook/store/ opens the file"
    assert names == [], "only trajhook/store/ names the store's datasets"
