# wspet: `make train` and `make test` do all the set-up on a fresh machine (see README.md).
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned and installed first, so nothing re-resolves torch to a multi-GB CUDA build on a CPU
# machine. On a GPU machine: `make install TORCH_SPEC="torch==2.13.0 --index-url <cuda index>"`.
TORCH_SPEC ?= torch==2.13.0
DATA ?= data/phantom
SMOKE_DIR ?= outputs/smoke

.PHONY: install data train test test-slow test-slurm smoke bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(DATA)/dataset.json: | install
	$(PY) -m wspet.data.phantom $(DATA)

data: $(DATA)/dataset.json

# The default experiment: the box-Dice stage, then L_MDice + L_MS, evaluated on the test split.
train: install data
	$(PY) train.py data.root=$(DATA) trainer.enable_progress_bar=false $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(ARGS)

smoke: install
	bash scripts/smoke.sh $(SMOKE_DIR)

clean:
	rm -rf outputs multirun .pytest_cache

test-slurm: install
	$(PY) -m pytest -m slurm tests/slurm $(ARGS)

bench: install
	$(PY) -m wspet.bench $(ARGS)
