# The two commands README promises: `make run` and `make test`. Both create .venv/ here and
# install what they need into it; `make test` also installs the services the tests start.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
APT_PACKAGES := redis-server chromium chromium-driver procps
# Installed without recommends (prometheus would pull in a whole web stack otherwise).
APT_PACKAGES_NO_RECOMMENDS := prometheus

.PHONY: run test test-random e2e lint bench system-deps clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	# torch 2.14.1 + torchvision 0.29.1 come from this machine's local wheels (export extra)
	$(VENV)/bin/pip install -q -e '.[export,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The services the tests start, and Docker with the Compose plugin (tests/e2e/install.sh) for
# the deploy test and pytest's `docker compose config` checks.
system-deps: $(STAMP)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	bare=""; for p in $(APT_PACKAGES_NO_RECOMMENDS); do dpkg -s $$p >/dev/null 2>&1 || bare="$$bare $$p"; done; \
	if [ -n "$$missing$$bare" ]; then apt-get update -q; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi; \
	if [ -n "$$bare" ]; then \
	  echo "installing (no recommends):$$bare"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$bare; \
	fi
	bash tests/e2e/install.sh

run: $(STAMP)
	RAIOX_ALLOW_UNTRAINED_MODEL=$${RAIOX_ALLOW_UNTRAINED_MODEL:-1} \
	  RAIOX_OPEN_ACCESS=$${RAIOX_OPEN_ACCESS:-1} $(VENV)/bin/raiox demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# pytest and the deploy test run side by side (tests/suite.sh).
test: $(STAMP) system-deps lint
	bash tests/suite.sh

# The same suite in a random order (modules and the tests in each); the seed is printed, and
# `-p random_order --random-order-seed=N` replays it. Every test must pass alone and in any order.
test-random: $(STAMP) system-deps
	$(VENV)/bin/pytest -q --random-order

# The deploy test: Docker + the images + the Ansible playbooks on this machine (tests/e2e/deploy.sh).
e2e: $(STAMP)
	bash tests/e2e/deploy.sh

bench: $(STAMP)
	$(PY) tests/bench/model.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
