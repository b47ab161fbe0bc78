# `make demo` and `make test` set everything up on a fresh machine; every target is idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install install-train demo test train bench clean

install: $(VENV)/.installed
install-train: $(VENV)/.installed-train

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[cpu,dev]"
	touch $@

$(VENV)/.installed-train: $(VENV)/.installed
	$(PIP) -e ".[cpu,dev,train]"
	touch $@

demo: install
	$(PY) -m galaxy_infer.demo

test: install-train
	$(PY) -m pytest

train: install-train
	$(PY) -m training train --config training/configs/default.toml

bench: install-train
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) demo-output bench-results
