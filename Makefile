# `make demo` and `make test` work on a fresh machine with only Python 3.11.
#
# Two environments, because procgen2 pins numpy<2 while current transformers/trl/datasets need numpy 2:
#   .venv     the maze side: procgen2, Stable-Baselines3, Lightning, W&B, TensorBoard (numpy 1)
#   .venv-lm  the language-model side: transformers, TRL, datasets, both Lightning packages (numpy 2)
# Each installs trajhook in editable mode with the extras a user of that side would pick.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# The CPU build of torch: a plain `torch` requirement would pull a multi-GB CUDA build. On this
# project's machines pip finds the CPU wheel on disk; elsewhere, pass the CPU index, e.g.
# `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH  := torch==2.13.0
TORCH_INDEX ?=
MAZE_VENV := .venv
LM_VENV   := .venv-lm
MAZE_EXTRAS := maze,sb3,lightning,wandb,tensorboard,serve,dev
LM_EXTRAS   := hf,lightning,wandb,tensorboard,serve,ray,dev
LM_TEST_DEPS := trl datasets lightning "numpy>=2"
PYTEST_ENV := WANDB_MODE=offline WANDB_SILENT=true MPLBACKEND=Agg TRAJHOOK_STRICT_SKIPS=1
PYTEST := -m pytest -q -rs

.PHONY: demo figures test test-maze test-lm lint bench browser clean

define make_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -c "import torch" 2>/dev/null || $(1)/bin/python -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
endef

$(MAZE_VENV)/.installed: pyproject.toml Makefile
	$(call make_venv,$(MAZE_VENV))
	$(MAZE_VENV)/bin/python -m pip install -q -e ".[$(MAZE_EXTRAS)]"
	touch $@

$(LM_VENV)/.installed: pyproject.toml Makefile
	$(call make_venv,$(LM_VENV))
	$(LM_VENV)/bin/python -m pip install -q -e ".[$(LM_EXTRAS)]" $(LM_TEST_DEPS)
	# DeepSpeed builds against the torch already installed (no isolated build env that would fetch another torch)
	$(LM_VENV)/bin/python -c "import deepspeed" 2>/dev/null || $(LM_VENV)/bin/python -m pip install -q --no-build-isolation "deepspeed>=0.15"
	touch $@

demo: $(MAZE_VENV)/.installed
	$(MAZE_VENV)/bin/python examples/maze_lightning.py
	@echo
	@echo "Watch the run (live while it trains, too):  $(MAZE_VENV)/bin/trajhook serve runs/maze.h5"

# The README's PPO maze figures, from the committed store of the real run
figures: $(MAZE_VENV)/.installed
	$(MAZE_VENV)/bin/python docs/make_figures.py docs/runs/ppo_procgen_maze.h5 --out-dir docs/images

lint: $(LM_VENV)/.installed
	$(LM_VENV)/bin/python -m ruff check .
	$(LM_VENV)/bin/python -m ruff format --check .

# Debian's chromium and chromium-driver, for the report's test in a real browser; installed when
# missing where we are root (CI is), else that test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The language-model side runs every test not marked `maze` (numpy 2); the maze side runs the rest.
test: lint browser $(MAZE_VENV)/.installed
	$(PYTEST_ENV) $(LM_VENV)/bin/python $(PYTEST) -m "not maze"
	$(PYTEST_ENV) $(MAZE_VENV)/bin/python $(PYTEST) -m maze

test-lm: $(LM_VENV)/.installed
	$(PYTEST_ENV) $(LM_VENV)/bin/python $(PYTEST) -m "not maze"

test-maze: $(MAZE_VENV)/.installed
	$(PYTEST_ENV) $(MAZE_VENV)/bin/python $(PYTEST) -m maze

bench: $(MAZE_VENV)/.installed
	$(MAZE_VENV)/bin/python benchmarks/run_all.py

clean:
	rm -rf $(MAZE_VENV) $(LM_VENV) build *.egg-info
