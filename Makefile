# The two commands of the README: `make test` and `make demo`.
# TORCH_SPEC is installed before medseg so pip keeps it: the pin resolves to a local CPU wheel on
# the development machines; elsewhere pip fetches that release for your platform (CUDA on Linux).
# Override it to use another build, e.g. `make test TORCH_SPEC=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: test demo install clean

$(BIN)/medseg: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,all]"
	touch $(BIN)/medseg

install: $(BIN)/medseg

test: install
	$(BIN)/python -m pytest

# The demo pipeline on the shipped sample; its outputs go to work/demo (rerun to start over).
demo: install
	rm -rf work/demo
	$(BIN)/medseg run pipelines/demo.yaml

clean:
	rm -rf $(VENV) .pytest_cache
