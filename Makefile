# maml-tf: every experiment of the paper, from data to tables and figures.
# Budgets default to the paper's; ITERATIONS=N trains less (results are then labelled partial).
PY ?= .venv/bin/python
ITERATIONS ?=
OMNIGLOT_SOURCE ?=
MINIIMAGENET_IMAGES ?=
iters = $(if $(ITERATIONS),--iterations $(ITERATIONS))

.PHONY: setup test bench sinusoid data data-omniglot data-miniimagenet

## setup: a virtual environment in .venv with the pinned requirements
setup: .venv/.installed
.venv/.installed: requirements.txt
	@# PY=python3 make ... uses an existing environment instead
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -r requirements.txt
	touch $@

## test: the test suite (minutes on 2 cores)
test: setup
	$(PY) -m pytest -q tests

## bench: seconds per meta-iteration against the matmul floor -> results/bench/latest.json
bench: setup
	$(PY) -m reproduce.bench

## sinusoid: train (or resume) MAML, pretrained and oracle; regenerate results/sinusoid/
sinusoid: setup
	$(PY) -m reproduce.sinusoid $(iters)

## data: download (or copy from OMNIGLOT_SOURCE), verify and preprocess the datasets into data/
data: data-omniglot data-miniimagenet
data-omniglot: setup
	$(PY) -m data_prep.omniglot $(if $(OMNIGLOT_SOURCE),--source $(OMNIGLOT_SOURCE)) --out data/omniglot
data-miniimagenet: setup
	$(PY) -m data_prep.miniimagenet $(if $(MINIIMAGENET_IMAGES),--images $(MINIIMAGENET_IMAGES)) --out data/miniimagenet
