# gato_jax: every target installs what it needs first (a stamp file makes that idempotent).
# Usage: make train EXP=atari_mix | make train EXP=atari_mix:smoke ARGS=--config.num_train_steps=40
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install.stamp
EXP ?= atari_mix
EXP_NAME := $(firstword $(subst :, ,$(EXP)))
EXP_ARG := $(word 2,$(subst :, ,$(EXP)))
CONFIG := experiments/$(EXP_NAME).py$(if $(EXP_ARG),:$(EXP_ARG),)
WORKDIR ?= runs/$(EXP_NAME)$(if $(EXP_ARG),_$(EXP_ARG),)
ARGS ?=
PYTEST_WORKERS ?= 2

.PHONY: install train data eval sample bench compile test test-slow lint clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,mujoco]"
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install the package with its dev and mujoco extras.

data: $(STAMP)  ## Prepare every dataset the experiment needs (idempotent).
	$(PY) -m data_pipelines.prepare --config $(CONFIG) $(ARGS)

train: $(STAMP)  ## Prepare missing data, then train (resumes from WORKDIR).
	$(PY) -m gato_jax.main --config $(CONFIG) --workdir $(WORKDIR) $(ARGS)

eval: $(STAMP)  ## Evaluate the latest checkpoint in WORKDIR on the experiment's tasks.
	$(PY) -m gato_jax.evaluate --config $(CONFIG) --workdir $(WORKDIR) $(ARGS)

sample: $(STAMP)  ## Sample text or a caption from the latest checkpoint: ARGS='--prompt "To be"'.
	$(PY) -m gato_jax.sample --workdir $(WORKDIR) $(ARGS)

compile: $(STAMP)  ## Compile the train step ahead of time for the configured mesh; print memory and FLOPs.
	$(PY) -m gato_jax.compile --config $(CONFIG) $(ARGS)

bench: $(STAMP)  ## Run every benchmark and print one table (runs/bench/results.json).
	$(PY) -m gato_jax.bench $(ARGS)

test: $(STAMP)  ## The fast suite, in parallel, with the slowest tests listed.
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --durations=15 -q $(ARGS)

test-slow: $(STAMP)  ## The slow tests only.
	$(PY) -m pytest -m slow --durations=15 -q $(ARGS)

lint: $(STAMP)  ## ruff over the code.
	$(PY) -m ruff check gato_jax data_pipelines experiments tests

clean:  ## Remove the environment and caches (runs/ and data/ are kept).
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
