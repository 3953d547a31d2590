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

setup: $(STAMP) bubblewrap

# The sandbox's default backend (docs/sandbox.md) needs bubblewrap's `bwrap`: installed from the
# Debian package when it is missing and we are root; otherwise we say what to do.
.PHONY: bubblewrap
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update && apt-get install -y bubblewrap; \
	  else \
	    echo "warning: bubblewrap (bwrap) is missing; the sandbox's default backend needs it and runs the server as root." >&2; \
	    echo "  Install it as root (Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf install bubblewrap)," >&2; \
	    echo "  or choose another backend: SWITCHBOARD_SANDBOX__BACKEND=docker, or =none (no sandbox tools)." >&2; \
	  fi; }

# `make run` keeps its database and model cache in the checkout's data/ (unless
# SWITCHBOARD_DATA_DIR says otherwise); `make run PORT=8080` serves on another port.
run: export SWITCHBOARD_DATA_DIR ?= $(CURDIR)/data
# The default sandbox backend (bubblewrap) gives each user a uid of their own, which takes root.
# Run as another user, `make run` serves without sandboxes, and says so, rather than failing.
run: export SWITCHBOARD_SANDBOX__BACKEND ?= $(if $(filter 0,$(shell id -u)),bubblewrap,none)
run: setup
	$(BIN)/switchboard db upgrade
	$(BIN)/switchboard model prepare
	$(BIN)/switchboard demo-setup $(if $(PORT),--port $(PORT))
	@[ "$$SWITCHBOARD_SANDBOX__BACKEND" != none ] || echo "note: not root, so no sandboxes (code-running tools are off); see docs/sandbox.md"
	$(BIN)/switchboard serve $(if $(PORT),--port $(PORT))

# The suite in two passes: most tests in parallel, then the timing-sensitive and multi-process
# ones (marked `serial` in tests/conftest.py) alone, so that no other test's load skews them.
TEST_WORKERS ?= 4
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not serial" --durations=10
	$(BIN)/python -m pytest -m serial --durations=15

bench: setup
	$(BIN)/python -m bench.gateway

clean:
	rm -rf $(VENV) build *.egg-info
