# facefleet: one entry point for setting up, running, testing and deploying.
# Every target that needs Python packages depends on the virtualenv, so `make test` and
# `make demo` work on a fresh machine (system packages: see `make system-deps`).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FACEFLEET_SHARED ?= ../shared
export FACEFLEET_SHARED

.PHONY: help venv system-deps demo test test-nolab test-fast flaky-loop check lint typecheck ansible-lint \
        edge-py39 test-py39 lab lab-up lab-deploy lab-down bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[opencv,monitor,dev]'
	touch $@

venv: $(VENV)/.installed ## create .venv with facefleet and everything it needs

# python3-opencv and opencv-data: the detector's check under a distribution OpenCV (4.6)
system-deps: ## install the Debian packages the demo, tests and lab need (root)
	@if command -v mosquitto >/dev/null && command -v debootstrap >/dev/null \
	    && command -v systemd-nspawn >/dev/null && command -v ssh >/dev/null \
	    && dpkg -s python3-opencv opencv-data >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	        mosquitto mosquitto-clients debootstrap systemd-container openssh-client iproute2 \
	        python3-venv ca-certificates python3-opencv opencv-data >/dev/null; \
	    systemctl disable --now mosquitto >/dev/null 2>&1 || true; \
	else echo "missing system packages; run 'sudo make system-deps'" >&2; exit 1; fi

demo: system-deps venv ## run the whole pipeline on this machine (brokers, services, monitor)
	$(VENV)/bin/facefleet demo $(DEMO_ARGS)

test: system-deps venv ## everything CI runs: static checks, unit, integration, the lab (root; ~25 min)
	$(PY) -m tests.stages $(PYTEST_ARGS)

test-nolab: system-deps venv ## everything but the lab: static checks, unit and integration tests
	$(PY) -m tests.stages --skip lab $(PYTEST_ARGS)

test-fast: venv ## unit tests only (seconds)
	$(PY) -m tests.stages --only unit $(PYTEST_ARGS)

flaky-loop: system-deps venv ## the monitor, fleet-status and relay tests 20 times; failures in build/flaky/
	$(PY) -m tests.flaky_loop $(FLAKY_ARGS)

lint: venv ## ruff
	$(VENV)/bin/ruff check apps tui tests bench lab roles
	$(VENV)/bin/ruff format --check apps tui tests bench lab roles

typecheck: venv ## mypy (strict) on the packages
	$(VENV)/bin/mypy

ansible-lint: venv ## ansible-lint, production profile
	$(VENV)/bin/ansible-lint --offline --profile production site.yml playbooks roles

# The edge services (and every facefleet module they import, listed by tests/edge_modules.py)
# must run on Python 3.9 (JetPack 5): no syntax or standard-library call newer than that.
edge-py39: venv ## the edge code uses nothing newer than Python 3.9 (vermin)
	$(VENV)/bin/vermin -q -t=3.9- --no-tips --violations $$($(PY) -m tests.edge_modules)

check: lint typecheck ansible-lint edge-py39 ## all static checks

test-py39: venv ## the edge services on a real Python 3.9: a Debian 11 chroot (root; about 4 min)
	PYTHON=$(abspath $(PY)) tests/py39/run-edge-on-py39.sh

lab: lab-up lab-deploy ## lab fleet up and deployed
	@echo "watch it: $(VENV)/bin/facefleet monitor --inventory inventory/lab/hosts.yml"

lab-up: system-deps venv ## start the lab hosts (systemd-nspawn), write inventory/lab/hosts.yml
	$(PY) -m lab up $(LAB_ARGS)

lab-deploy: venv ## run site.yml against the lab
	$(VENV)/bin/ansible-playbook -i inventory/lab/hosts.yml site.yml $(DEPLOY_ARGS)

lab-down: ## stop and remove the lab hosts
	$(PY) -m lab down

bench: system-deps venv ## run the benchmarks, write bench/results.json
	$(PY) -m bench $(BENCH_ARGS)

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
