"""Collection rules for the two test environments (see the Makefile), and the skip policy.

Modules that import a framework only one environment has are not collected in the other one:
their doctests run where the framework is installed.

Skips are loud: ``make test`` runs pytest with ``-rs`` (every skip's reason is printed) and with
``TRAJHOOK_STRICT_SKIPS=1``, under which a skip fails the run unless it is one of the two kinds
that are expected here: a GPU test on a machine without CUDA, or a test that needs a package which
only the *other* environment carries (procgen and SB3 on the maze side; transformers, TRL, datasets
and the unified ``lightning`` package on the language-model side).
"""

import importlib.util
import os
import re

_NEEDS = {
    "trajhook/integrations/sb3.py": "stable_baselines3",
    "trajhook/integrations/hf.py": "transformers",
    "trajhook/envs": "gymnasium",
}

collect_ignore = [path for path, module in _NEEDS.items() if importlib.util.find_spec(module) is None]
collect_ignore_glob = ["tests/distributed/*.py"]  # scripts that torchrun starts, not test modules

# The packages each environment leaves to the other one (Makefile: MAZE_EXTRAS, LM_EXTRAS, LM_TEST_DEPS).
_MAZE_ONLY = {"procgen", "gym3", "gym", "gymnasium", "stable_baselines3"}
_LM_ONLY = {"transformers", "trl", "datasets", "lightning", "accelerate", "deepspeed", "ray"}
_ALLOWED_REASONS = (re.compile(r"needs a CUDA GPU"), re.compile(r"^split environment: "))
_skips: list[tuple[str, str]] = []


def _other_side() -> set[str]:
    return _LM_ONLY if importlib.util.find_spec("procgen") is not None else _MAZE_ONLY


def _allowed(reason: str) -> bool:
    if any(pattern.search(reason) for pattern in _ALLOWED_REASONS):
        return True
    missing = re.search(r"could not import '([\w.]+)'", reason)
    return missing is not None and missing.group(1).split(".")[0] in _other_side()


def _record_skip(report) -> None:  # a pytest TestReport or CollectReport
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):
    _record_skip(report)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("TRAJHOOK_STRICT_SKIPS") != "1":
        return
    unexpected = [(node, reason) for node, reason in _skips if not _allowed(reason)]
    if unexpected:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["", "Skips that fail `make test` (only GPU tests and the other environment's tests may skip):"]
        lines += [f"  {node}: {reason}" for node, reason in unexpected]
        if reporter is not None:
            for line in lines:
                reporter.write_line(line, red=True)
        session.exitstatus = 1
