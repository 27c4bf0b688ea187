# `make demo` and `make test` work on a fresh machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU build of torch: a plain `torch` requirement would pull a multi-GB CUDA build. On this
# project's machines pip finds the CPU wheel on disk; elsewhere, pass the CPU index, e.g.
# `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH  := torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/maze_lightning.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	WANDB_MODE=offline WANDB_SILENT=true MPLBACKEND=Agg $(VENV)/bin/pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
