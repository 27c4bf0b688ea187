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

# Every figure the README shows, into docs/images, each from its store or the example that draws it
# (minutes on 2 idle cores, most of them `make demo`'s training): the PPO maze figures from the
# committed store of the real run, `make demo`'s run (its GIF copied from runs/), the three
# language-model examples (stores in runs/), the arrow-glyph card of tests/test_arrow_glyphs.py, and a
# screenshot of `trajhook serve` on the PPO store (the demo's runs/maze.h5 if that is missing). Each figure gets one line, `figure: FILE <- COMMAND`.
FIGURES := docs/images
# $(call figure,FILES,COMMAND): run COMMAND, then name each of FILES (in $(FIGURES)) with it
define figure
	$(2)
	@for f in $(1); do echo "figure: $(FIGURES)/$$f <- $(strip $(2))"; done
endef
figures: export MPLBACKEND := Agg
figures: export WANDB_MODE := offline
figures: export WANDB_SILENT := true
figures: $(MAZE_VENV)/.installed $(LM_VENV)/.installed browser
	$(call figure,ppo_maze_dynamics.png ppo_maze_agreement.png ppo_maze_fields.png,$(MAZE_VENV)/bin/python docs/make_figures.py docs/runs/ppo_procgen_maze.h5 --out-dir $(FIGURES) --no-gif)
	$(call figure,ppo_reward/ppo_maze_training.gif ppo_reward/ppo_maze_agreement.png ppo_reward/ppo_maze_fields.png ppo_reward/ppo_maze_dynamics.png,$(MAZE_VENV)/bin/python docs/make_figures.py docs/runs/ppo_procgen_reward.h5 --out-dir $(FIGURES)/ppo_reward)
	$(call figure,maze_agreement.png maze_vector_field.png,$(MAZE_VENV)/bin/python examples/maze_lightning.py --figures-dir $(FIGURES))
	cp runs/maze.gif $(FIGURES)/maze_training.gif
	@echo "figure: $(FIGURES)/maze_training.gif <- $(MAZE_VENV)/bin/python examples/maze_lightning.py (its runs/maze.gif)"
	$(call figure,induction_heads.png,$(LM_VENV)/bin/python examples/induction_heads.py --out runs/induction_heads.h5 --figure $(FIGURES)/induction_heads.png)
	$(call figure,finetune_phase.png,$(LM_VENV)/bin/python examples/finetune_phase.py --out runs/finetune_phase.h5 --figure $(FIGURES)/finetune_phase.png)
	$(call figure,rlhf_sft_dpo.png,$(LM_VENV)/bin/python examples/rlhf_sft_dpo.py --out runs/rlhf_sft_dpo.h5 --figure $(FIGURES)/rlhf_sft_dpo.png)
	$(call figure,arrows_every_strength.png,$(MAZE_VENV)/bin/python docs/arrow_glyphs.py --out $(FIGURES)/arrows_every_strength.png)
	$(call figure,serve_live.png,$(MAZE_VENV)/bin/python docs/screenshot_serve.py docs/runs/ppo_procgen_maze.h5 --fallback runs/maze.h5 --out $(FIGURES)/serve_live.png)

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
