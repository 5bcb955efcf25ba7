# The two commands a user needs: `make demo` and `make test`. Each sets up .venv first.
# `make demo` vocodes held-out speech with the shipped voice; `make demo-train` runs the training quickstart.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo demo-train lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest

demo: $(VENV)/.installed
	$(PY) recipes/demo/run.py --out exp/demo

demo-train: $(VENV)/.installed
	bash recipes/quickstart/run.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check diffwave tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
