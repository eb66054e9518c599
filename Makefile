# The two commands a newcomer needs: `make run` and `make test`.
# Each creates .venv and installs the project on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test bench loadtest venv clean

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

clean:
	rm -rf $(VENV) var .pytest_cache
