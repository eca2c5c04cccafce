# The two commands of the README. Each creates .venv if missing and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-fast bench bench-ingest clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	# torch first, pinned to the CPU build this machine has on disk (else pip pulls CUDA builds)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,embed,images]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lsmvec.tools.demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m 'not slow'

# One benchmark per name, as in the lsmvec command (ARGS='--n 100000' passes options on)
bench: $(STAMP)
	$(BIN)/lsmvec bench $(ARGS)

bench-ingest: $(STAMP)
	$(BIN)/lsmvec bench-ingest $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
