"""Collection rules for the two test environments (see the Makefile).

Modules that import a framework only one environment has are not collected in the other one:
their doctests run where the framework is installed.
"""

import importlib.util

_NEEDS = {
    "integrations/sb3.py": "stable_baselines3",
    "integrations/hf.py": "transformers",
    "trajhook/envs": "gymnasium",
}

collect_ignore = [path for path, module in _NEEDS.items() if importlib.util.find_spec(module) is None]
collect_ignore_glob = ["tests/distributed/*.py"]  # scripts that torchrun starts, not test modules
