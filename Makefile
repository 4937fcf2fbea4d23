# maml-tf: every experiment of the paper, from data to tables and figures.
# Budgets default to the paper's; ITERATIONS=N trains less (results are then labelled partial).
PY ?= .venv/bin/python
ITERATIONS ?=
# make sinusoid / table1 / rl-* evaluate the committed runs (minutes); TRAIN=1 trains (or resumes)
# them to their budget first, printing the hours each still needs before it starts
TRAIN ?=
evalonly = $(if $(TRAIN),,--eval-only)
OMNIGLOT_SOURCE ?=
MINIIMAGENET_IMAGES ?=
iters = $(if $(ITERATIONS),--iterations $(ITERATIONS))
# reproduce.appendix context evaluates by default; TRAIN=1 trains first
trainctx = $(if $(TRAIN),--train $(iters))

.PHONY: help setup test bench report appendix appendix-table2 appendix-context appendix-table3 appendix-table4 appendix-table5 campaign campaign-status data-miniimagenet-if-available sinusoid data data-omniglot data-miniimagenet rl rl-point rl-cheetah-vel rl-cheetah-dir rl-ant-vel rl-ant-dir rl-obs-pilot table1

## help: this list of targets
help:
	@sed -n 's/^## //p' Makefile

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

## sinusoid: evaluate MAML, pretrained and oracle, regenerate results/sinusoid/ (TRAIN=1: train first)
sinusoid: setup
	$(PY) -m reproduce.sinusoid $(iters) $(evalonly)

## data: download (or copy from OMNIGLOT_SOURCE), verify and preprocess the datasets into data/
data: data-omniglot data-miniimagenet-if-available
## data-omniglot: Omniglot only (from OMNIGLOT_SOURCE, default ../shared/data/omniglot, else its URL)
data-omniglot: setup
	$(PY) -m data_prep.omniglot $(if $(OMNIGLOT_SOURCE),--source $(OMNIGLOT_SOURCE)) --out data/omniglot
## data-miniimagenet: from ../shared/data/miniimagenet/images.tar.xz (sha256 checked) when it is there;
## MINIIMAGENET_IMAGES=folder or archive (.tar, .tar.xz, .tar.gz, .zip) of your own images instead
data-miniimagenet: setup
	$(PY) -m data_prep.miniimagenet $(if $(MINIIMAGENET_IMAGES),--images $(MINIIMAGENET_IMAGES)) $(if $(MINIIMAGENET_SPLITS),--splits $(MINIIMAGENET_SPLITS)) --out data/miniimagenet

# the MiniImagenet data when images are available (the offline copy or MINIIMAGENET_IMAGES), else a note
data-miniimagenet-if-available: setup
	@if [ -n "$(MINIIMAGENET_IMAGES)" ] || [ -f ../shared/data/miniimagenet/images.tar.xz ]; then \
		$(MAKE) --no-print-directory data-miniimagenet; \
	else echo "note: no MiniImagenet images (../shared/data/miniimagenet/images.tar.xz or MINIIMAGENET_IMAGES=...): its cells keep their committed rows (else: not run)"; fi

## table1: evaluate every cell of Table 1 (the checkpoint picked by meta-validation, 600 test tasks)
## -> results/table1.{md,json}; TRAIN=1 first trains (or resumes) each cell to ITERATIONS (default
## the paper's 60,000); TABLE1_ARGS="--cells omniglot_5w1s_conv" picks cells.
TABLE1_ARGS ?=
table1: setup data-omniglot data-miniimagenet-if-available
	$(PY) -m reproduce.table1 $(iters) $(evalonly) $(TABLE1_ARGS)

## appendix: Appendix C baselines -> results/appendix/ (Table 2: multi-task parameter averaging;
## Tables 3-5: the context vector)
appendix: appendix-table2 appendix-context
## appendix-table2: Table 2 (trains what is missing: about 40 core-minutes per variant) -> results/appendix/table2.md
appendix-table2: setup
	$(PY) -m reproduce.appendix table2
## appendix-context: Tables 3-5, the context vector against MAML (z_dim from its pilot runs:
## context_pilot.md), evaluating the committed runs (TRAIN=1: train them to the paper's budget
## first, hours: `make campaign` trains them a few at a time) -> results/appendix/context.md
appendix-context: setup data-omniglot
	$(PY) -m reproduce.appendix context-pilot
	$(PY) -m reproduce.appendix context $(trainctx)
## appendix-table3, appendix-table4, appendix-table5: one table's context runs each (Omniglot, 2D
## point, half-cheetah direction; the same TRAIN=1 rule), the others' rows kept -> context.md
appendix-table3: setup data-omniglot
	$(PY) -m reproduce.appendix context --tables 3 $(trainctx)
appendix-table4: setup
	$(PY) -m reproduce.appendix context --tables 4 $(trainctx)
appendix-table5: setup
	$(PY) -m reproduce.appendix context --tables 5 $(trainctx)

## rl: evaluate MAML-TRPO and the baselines on every RL task, regenerate results/rl/ (TRAIN=1: train first)
rl: rl-point rl-cheetah-vel rl-cheetah-dir rl-ant-vel rl-ant-dir
## rl-point, rl-cheetah-vel, rl-cheetah-dir, rl-ant-vel, rl-ant-dir: one RL task each (the same TRAIN=1 rule)
rl-point: setup
	$(PY) -m reproduce.rl point $(iters) $(evalonly)
rl-cheetah-vel: setup
	$(PY) -m reproduce.rl cheetah_vel $(iters) $(evalonly)
rl-cheetah-dir: setup
	$(PY) -m reproduce.rl cheetah_dir $(iters) $(evalonly)
rl-ant-vel: setup
	$(PY) -m reproduce.rl ant_vel $(iters) $(evalonly)
rl-ant-dir: setup
	$(PY) -m reproduce.rl ant_dir $(iters) $(evalonly)
## rl-obs-pilot: the campaign's half-cheetah pilots with rllab's observation against the default runs (seconds)
rl-obs-pilot: setup
	$(PY) -m reproduce.rl_pilot obs_pilot

## report: every table regenerated from the committed results, one page: results/README.md (seconds)
report: setup
	$(PY) -m reproduce.report

## campaign: train the queue of unfinished runs (reproduce/campaign.py) for HOURS on CORES cores,
## one run per core, stop them cleanly, evaluate what moved -> results/campaign.md and the tables
HOURS ?= 2.5
CORES ?= $(shell nproc)
REPORT_MINUTES ?= 15
campaign: setup data-omniglot data-miniimagenet-if-available
	$(PY) -m reproduce.campaign --hours $(HOURS) --cores $(CORES) --report-minutes $(REPORT_MINUTES)
## campaign-status: where every run of the queue stands and the core-hours left; trains nothing (seconds)
campaign-status: setup
	$(PY) -m reproduce.campaign --status
