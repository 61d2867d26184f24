# The README's commands. Each one sets up the venv it needs (pip, pinned CPU torch) on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch_extensions
export PYTHONPATH := $(abspath operator):$(abspath trainer)

.PHONY: venv test test-fast lint format crds quickstart clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

## test: the whole suite, slow tests included (what CI runs)
test: venv
	$(PY) -m pytest

## test-fast: skip the slow tests
test-fast: venv
	$(PY) -m pytest -m 'not slow'

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## crds: regenerate crds/fusionrun.yaml from the API models (and the Helm chart's copy)
crds: venv
	$(VENV)/bin/kubefusion crd -o crds/fusionrun.yaml
	$(PY) charts/kubefusion/hack/sync_crd.py

## quickstart: the local CPU fusion run (until the local runner lands: validate and plan it)
quickstart: venv
	$(VENV)/bin/kubefusion validate -f examples/quickstart.yaml
	$(VENV)/bin/kubefusion plan -f examples/quickstart.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
