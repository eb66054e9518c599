# The two commands a newcomer needs: `make run` and `make test`.
# Each creates .venv and installs the project on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
# `make test` runs one pytest-xdist process per CPU, each given whole files (their module fixtures
# are set up once); PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= auto

.PHONY: help run test bench loadtest chaos audit venv clean

## help: list every target and what it does
help:
	@awk 'sub(/^## /, "") { i = index($$0, ": "); printf "  make %-12s %s\n", substr($$0, 1, i - 1), substr($$0, i + 2) }' $(MAKEFILE_LIST)

## venv: create .venv and install the project with its test tools (the targets below do it first)
venv: $(INSTALLED)

$(INSTALLED): setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "myapp needs Python 3.11 or newer; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[testing]'
	touch $(INSTALLED)

## run: the app with the development provider and demo API, on http://127.0.0.1:6543
run: $(INSTALLED)
	mkdir -p var
	$(BIN)/alembic -c development.ini upgrade head
	$(BIN)/pserve development.ini

## test: every test; PYTEST_ARGS="-k proxy" make test passes arguments to pytest
test: $(INSTALLED)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

INSTALLED_BENCH := $(VENV)/.installed-bench

$(INSTALLED_BENCH): $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e '.[testing,bench]'
	touch $(INSTALLED_BENCH)

## bench: throughput and latency of the proxy against bare proxies (installs wrk)
bench: $(INSTALLED_BENCH)
	bench/install-wrk.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## loadtest: 100 simulated people on two processes and PostgreSQL for 60 s
loadtest: $(INSTALLED)
	$(BIN)/python bench/loadtest.py $(LOADTEST_ARGS)

## chaos: faults (PostgreSQL, Redis, provider, upstream, a killed process) under load; fails if anything is lost
chaos: $(INSTALLED_BENCH)
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)

INSTALLED_AUDIT := $(VENV)/.installed-audit

$(INSTALLED_AUDIT): $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e '.[testing,audit]'
	touch $(INSTALLED_AUDIT)

## audit: installed packages against PyPI's advisory database (pip-audit); skipped, saying why, when unreachable
audit: $(INSTALLED_AUDIT)
	$(BIN)/python .ci/audit.py

## clean: remove .venv, var/ (the development database and keys), caches and test artifacts
clean:
	rm -rf $(VENV) var .pytest_cache test-artifacts

# End-to-end tests in a real Chromium (tests/e2e): Debian's chromium and chromium-driver, and
# Selenium from the `e2e` extra. No browser download. `make test` runs them too once these are
# installed, and reports them as skipped, with the reason, when they are not.
INSTALLED_E2E := $(VENV)/.installed-e2e
# The screenshots that docs/ and the README show, copied by `make screenshots` only.
DOC_SCREENSHOTS := desktop-01-landing desktop-03-dashboard desktop-04-posts desktop-07-sessions \
	desktop-08-audit desktop-10-signed-out phone-03-dashboard phone-07-sessions

.PHONY: e2e e2e-deps screenshots

$(INSTALLED_E2E): $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e '.[testing,e2e]'
	touch $(INSTALLED_E2E)

## e2e-deps: install Debian's chromium and chromium-driver, and Selenium, for the browser tests
e2e-deps: $(INSTALLED_E2E)
	bash tests/e2e/install-chromium.sh

## e2e: the browser tests in Chromium (make test runs them too once e2e-deps has run)
e2e: e2e-deps
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

## screenshots: retake the browser tests' screenshots and copy into docs/ those the docs show
screenshots: e2e-deps
	rm -rf test-artifacts/screenshots
	$(BIN)/pytest tests/e2e/test_ui.py $(PYTEST_ARGS)
	mkdir -p docs/screenshots
	for name in $(DOC_SCREENSHOTS); do cp test-artifacts/screenshots/$$name.png docs/screenshots/; done
