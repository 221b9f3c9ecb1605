# Two commands do everything on a fresh machine (Python 3.10+ needed):
#   make nsmc   - set up, then fine-tune the builtin model on an NSMC sample and print its test accuracy
#   make test   - set up, then run the test suite
# Set-up makes .venv and installs torch==2.13.0 FIRST (a bare `torch` requirement would pull a multi-GB
# CUDA build), then bertclf with its extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(abspath ../shared/data/nsmc)
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test test-fast nsmc clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[all,test]"
	touch $@

setup: $(VENV)/.installed

# two pytest workers, one per core, each test file on one worker (its module fixtures built once): the suite
# spends much of its time waiting on the CLI processes and servers it starts; the real fine-tunes (marked
# whole_cpu) take both cores in turn while the other worker waits (tests/support/whole_cpu.py)
test: setup
	BERTCLF_DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 $(PYTEST_ARGS)

test-fast: setup
	BERTCLF_DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

nsmc: setup
	$(BIN)/bertclf train --data nsmc --data-dir $(DATA_DIR) --sample 0.06 --valid-frac 0.1 --test-sample 0.2 \
		--out runs/nsmc-cpu --overwrite

clean:
	rm -rf $(VENV) runs .pytest_cache
