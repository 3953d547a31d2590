# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama-cpp-python compiles llama.cpp from source once; pip keeps the built wheel in its cache,
# so later set-ups (and CI on this machine) reuse it. Portable build: no -march=native.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# `make run` keeps its database and model cache in the checkout's data/ (unless
# SWITCHBOARD_DATA_DIR says otherwise); `make run PORT=8080` serves on another port.
run: export SWITCHBOARD_DATA_DIR ?= $(CURDIR)/data
run: setup
	$(BIN)/switchboard db upgrade
	$(BIN)/switchboard model prepare
	$(BIN)/switchboard demo-setup $(if $(PORT),--port $(PORT))
	$(BIN)/switchboard serve $(if $(PORT),--port $(PORT))

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench.gateway

clean:
	rm -rf $(VENV) build *.egg-info
