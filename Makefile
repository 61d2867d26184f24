# The README's commands. Each one sets up the venv it needs (pip, pinned CPU torch) on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch_extensions
export PYTHONPATH := $(abspath operator):$(abspath trainer)

.PHONY: venv test test-fast lint format crds quickstart quickstart-wrpo clean

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

## crds: regenerate crds/fusionrun.yaml, the Helm chart's copy and docs/fusionrun-reference.md from the API models
crds: venv
	$(VENV)/bin/kubefusion crd -o crds/fusionrun.yaml
	$(VENV)/bin/kubefusion crd --reference -o docs/fusionrun-reference.md
	$(PY) charts/kubefusion/hack/sync_crd.py

## quickstart: build the tiny demo world (demo/), then run the whole fusion on this machine (runs/quickstart/)
quickstart: venv
	$(VENV)/bin/kubefusion demo init --dir demo
	$(VENV)/bin/kubefusion run -f examples/quickstart.yaml

## quickstart-wrpo: the same world, fused with the WRPO recipe (runs/quickstart-wrpo/)
quickstart-wrpo: venv
	$(VENV)/bin/kubefusion demo init --dir demo
	$(VENV)/bin/kubefusion run -f examples/quickstart-wrpo.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
