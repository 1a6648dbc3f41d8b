# wspet: `make train` and `make test` do all the set-up on a fresh machine (see README.md).
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned and installed first, so that installing wspet does not re-resolve torch. Which build pip
# picks is up to its index: on Linux, PyPI's torch wheel is the CUDA build (GBs). For the CPU-only
# build: `make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"`;
# for a CUDA build: `--index-url https://download.pytorch.org/whl/cuNNN` (README.md, Installation).
TORCH_SPEC ?= torch==2.13.0
DATA ?= data/phantom
SMOKE_DIR ?= outputs/smoke

# Progress: Lightning's bar on a terminal, one log line per validation otherwise (wspet.training.callbacks).
.PHONY: FORCE install data train test test-slow test-slurm smoke ablation ablation-smoke sts-data sts bench clean

# The stamp holds TORCH_SPEC and changes only when it does, so a new TORCH_SPEC reinstalls.
TORCH_STAMP := $(VENV)/.torch-spec

$(TORCH_STAMP): FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH_SPEC)' | cmp -s - $@ || echo '$(TORCH_SPEC)' > $@

FORCE:

$(VENV)/.installed: pyproject.toml $(TORCH_STAMP)
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(DATA)/dataset.json: | install
	$(PY) -m wspet.datasets.phantom $(DATA)

data: $(DATA)/dataset.json

# The default experiment (loss=pseudo: labels made inside the boxes), evaluated on the test split.
train: install data
	$(PY) train.py data.root=$(DATA) $(ARGS)

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

# Where the time of a training step and of prediction goes, fp32 against precision=auto, with the
# targets checked (docs/performance.md); under 10 minutes on 2 cores. `make bench ARGS=--quick`: under 2.
BENCH_OUT ?= outputs/bench/$(shell date +%Y-%m-%d_%H-%M-%S).json
bench: install
	$(PY) -m wspet.bench --out $(BENCH_OUT) $(ARGS)

# The paper's Figure 1 as one Hydra multirun over experiments and seeds, then the report
# (results.csv, results.md, figure1.png, figure2.png in the sweep folder).
ABLATION_EXPERIMENTS ?= fs,dice,mdice,mdice_ms,mdice_ms_morph,dice_levelset,pseudo,boxproj,tightness
# With the stage cache one seed trains 8 distinct stages of up to 2000 steps, and one box-Dice stage of
# 500 that mdice, mdice_ms, boxproj and tightness share (docs/training.md);
# on 2 CPU cores run one seed per `make ablation` (SEEDS=0, then SEEDS=1 with the same SWEEP_DIR:
# run folders are named <experiment>-seed<seed>) to stay within 90 minutes each; on GPUs use more (SEEDS=0,1,2,3,4).
SEEDS ?= 0,1
SWEEP_DIR ?= outputs/ablation/$(shell date +%Y-%m-%d_%H-%M-%S)
ablation: install data
	$(PY) train.py -m experiment=$(ABLATION_EXPERIMENTS) seed=$(SEEDS) data.root=$(DATA) \
	    'hydra.sweep.subdir=$${experiment_name}-seed$${seed}' \
	    hydra.sweep.dir=$(SWEEP_DIR) stage_cache=$(SWEEP_DIR)/stage_cache $(ARGS)
	$(PY) -m wspet.evaluation.report $(SWEEP_DIR)

ablation-smoke: install
	bash scripts/ablation_smoke.sh

# The real soft-tissue-sarcoma scans (docs/results/sts-real.md): converted twice with one seeded
# split, with boxes only (data/sts, `data=sts`) and with the training labels too (data/sts-full,
# which loss=fs needs; the weak losses read only its boxes). Then fs, dice, mdice_ms and pseudo on
# data/sts-full and the report with the box and box_threshold rows.
STS_SRC ?= ../shared/data/sts-fdg-pet
STS_SWEEP_DIR ?= outputs/sts/$(shell date +%Y-%m-%d_%H-%M-%S)
STS_SEEDS ?= 0
STS_EXPERIMENTS ?= fs,dice,mdice_ms,pseudo
STS_ARGS ?= data.samples_per_volume=6

data/sts/dataset.json: | install
	$(PY) -m wspet.datasets.convert $(STS_SRC) data/sts --layout sts --weak --test-fraction 0.25 --seed 0

data/sts-full/dataset.json: | install
	$(PY) -m wspet.datasets.convert $(STS_SRC) data/sts-full --layout sts --test-fraction 0.25 --seed 0

sts-data: data/sts/dataset.json data/sts-full/dataset.json

sts: install sts-data
	$(PY) train.py -m data=sts data.root=data/sts-full experiment=$(STS_EXPERIMENTS) seed=$(STS_SEEDS) \
	    hydra.sweep.dir=$(STS_SWEEP_DIR) stage_cache=$(STS_SWEEP_DIR)/stage_cache \
	    $(STS_ARGS) $(ARGS)
	$(PY) -m wspet.evaluation.report $(STS_SWEEP_DIR)
