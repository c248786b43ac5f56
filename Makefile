# facefleet: one entry point for setting up, running, testing and deploying.
# Every target that needs Python packages depends on the virtualenv, so `make test` and
# `make demo` work on a fresh machine (system packages: see `make system-deps`).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FACEFLEET_SHARED ?= ../shared
export FACEFLEET_SHARED

.PHONY: help venv demo-deps system-deps demo test test-nolab test-fast flaky-loop check lint \
        typecheck ansible-lint edge-py39 test-py39 lab lab-up lab-deploy lab-down bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[opencv,monitor,dev]'
	touch $@

venv: $(VENV)/.installed ## create .venv with facefleet and everything it needs

# Debian packages: the demo needs mosquitto and python3-venv; the tests also the distribution's
# OpenCV (the detector's check under OpenCV 4.6) and the lab (tests/fleet, make lab, bench --lab)
# mmdebstrap, systemd-nspawn, ssh, ip and qemu-user for its arm64 hosts. Each pair is a command
# or file that the package provides and the package; each target names what is missing and
# installs it when run as root.
DEMO_PACKAGES := mosquitto:mosquitto
LAB_PACKAGES := mosquitto_pub:mosquitto-clients mmdebstrap:mmdebstrap arch-test:arch-test systemd-nspawn:systemd-container \
	ssh:openssh-client ip:iproute2 qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support \
	/usr/share/doc/python3-opencv:python3-opencv /usr/share/doc/opencv-data:opencv-data
define install_missing
	@missing=""; for pair in $(1); do what="$${pair%%:*}"; \
	    PATH="$$PATH:/usr/sbin:/sbin" command -v "$$what" >/dev/null || [ -e "$$what" ] || missing="$$missing $${pair#*:}"; done; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	        $$missing ca-certificates >/dev/null; \
	    systemctl disable --now mosquitto >/dev/null 2>&1 || true; \
	else echo "missing Debian packages:$$missing; run 'sudo make $(2)'" >&2; exit 1; fi
endef

demo-deps: ## install the Debian packages the demo needs (mosquitto, python3-venv; root)
	$(call install_missing,$(DEMO_PACKAGES),demo-deps)

system-deps: ## install the Debian packages the demo, tests and lab need (root)
	$(call install_missing,$(DEMO_PACKAGES) $(LAB_PACKAGES),system-deps)

demo: demo-deps venv ## run the whole pipeline on this machine (brokers, services, monitor)
	$(VENV)/bin/facefleet demo $(DEMO_ARGS)

test: system-deps venv ## everything CI runs: static checks, unit, integration, the lab (root; ~17–21 min)
	$(PY) -m tests.stages $(PYTEST_ARGS)

test-nolab: system-deps venv ## everything but the lab: static checks, unit and integration tests
	$(PY) -m tests.stages --skip lab $(PYTEST_ARGS)

test-fast: venv ## unit tests only (a couple of minutes)
	$(PY) -m tests.stages --only unit $(PYTEST_ARGS)

flaky-loop: system-deps venv ## the monitor, fleet-status and relay tests 20 times; failures in build/flaky/
	$(PY) -m tests.flaky_loop $(FLAKY_ARGS)

lint: venv ## ruff
	$(VENV)/bin/ruff check apps tui tests bench lab roles ansible_plugins
	$(VENV)/bin/ruff format --check apps tui tests bench lab roles ansible_plugins

typecheck: venv ## mypy (strict) on the packages
	$(VENV)/bin/mypy

ansible-lint: venv ## ansible-lint, production profile
	$(VENV)/bin/ansible-lint --offline --profile production site.yml playbooks roles

# The edge services (and every facefleet module they import, listed by tests/edge_modules.py)
# must run on Python 3.9 (JetPack 5): no syntax or standard-library call newer than that.
edge-py39: venv ## the edge code uses nothing newer than Python 3.9 (vermin)
	$(VENV)/bin/vermin -q -t=3.9- --no-tips --violations $$($(PY) -m tests.edge_modules)

check: lint typecheck ansible-lint edge-py39 ## all static checks

test-py39: venv ## the edge services on a real Python 3.9: a Debian 11 chroot (root; about a minute)
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
