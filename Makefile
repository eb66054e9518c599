# The two commands a newcomer needs: `make run` and `make test`.
# Each creates .venv and installs the project on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test bench loadtest audit venv clean

venv: $(INSTALLED)

$(INSTALLED): setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "myapp needs Python 3.11 or newer; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[testing]'
	touch $(INSTALLED)

run: $(INSTALLED)
	mkdir -p var
	$(BIN)/alembic -c development.ini upgrade head
	$(BIN)/pserve development.ini

test: $(INSTALLED)
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(INSTALLED)
	bench/install-wrk.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

loadtest: $(INSTALLED)
	$(BIN)/python bench/loadtest.py $(LOADTEST_ARGS)

# The installed packages against PyPI's advisory database (pip-audit); skipped, saying why,
# where that database cannot be reached.
INSTALLED_AUDIT := $(VENV)/.installed-audit

$(INSTALLED_AUDIT): $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e '.[testing,audit]'
	touch $(INSTALLED_AUDIT)

audit: $(INSTALLED_AUDIT)
	$(BIN)/python .ci/audit.py

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

e2e-deps: $(INSTALLED_E2E)
	bash tests/e2e/install-chromium.sh

e2e: e2e-deps
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

screenshots: e2e-deps
	rm -rf test-artifacts/screenshots
	$(BIN)/pytest tests/e2e/test_ui.py $(PYTEST_ARGS)
	mkdir -p docs/screenshots
	for name in $(DOC_SCREENSHOTS); do cp test-artifacts/screenshots/$$name.png docs/screenshots/; done
