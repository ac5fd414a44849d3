# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NATIVE_STAMP := $(VENV)/.native
RUST_SOURCES := $(shell find crates -name '*.rs' -o -name Cargo.toml 2>/dev/null) Cargo.toml
CONFIG ?= config/cuprumd.toml

.PHONY: all venv build test test-python test-unprivileged test-rust lint check-fmt typecheck fmt run bench clean

all: build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "maturin>=1.9.4,<2"
	touch $@

venv: $(STAMP)

# maturin develop builds the extension in release mode and installs the
# package in editable form into .venv (the .so lands beside the sources).
$(NATIVE_STAMP): $(STAMP) $(RUST_SOURCES)
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(BIN)):$$PATH \
		$(BIN)/maturin develop --release --quiet --extras dev
	touch $@

build: $(NATIVE_STAMP)

#: The uid the second, unprivileged run of the integration tests gives its
#: daemons, and the benchmarks' second run (as root only; an ordinary
#: user's run is already unprivileged).
UNPRIVILEGED_UID ?= 65534

test: build test-rust test-python test-unprivileged

test-python: build
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The deployed daemon is an unprivileged user: no cgroup subtree of its own,
# the per-user pipe budget. Run every real-daemon test again as one.
test-unprivileged: build
	@if [ "$$(id -u)" = 0 ]; then \
		command -v setpriv >/dev/null || { echo "setpriv is required" >&2; exit 1; }; \
		CUPRUM_TEST_DAEMON_USER=$(UNPRIVILEGED_UID) $(BIN)/python -m pytest \
			tests/integration tests/behaviour/test_daemon_behaviour.py $(PYTEST_ARGS); \
	else \
		echo "test-unprivileged: already unprivileged (uid $$(id -u)); covered by test-python"; \
	fi

test-rust:
	cargo test --workspace --quiet

check-fmt: build
	$(BIN)/ruff format --check .
	cargo fmt --all --check

typecheck: build
	$(BIN)/mypy

lint: check-fmt typecheck
	$(BIN)/ruff check .
	cargo clippy --workspace --all-targets --quiet -- -D warnings

fmt: build
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	cargo fmt --all

run: build
	$(BIN)/cuprumd serve --config $(CONFIG)

# As root, the throughput and daemon tables are measured again as
# UNPRIVILEGED_UID (setpriv): the deployed daemon's per-user pipe budget.
bench: build
	$(BIN)/python -m benchmarks --unprivileged-uid $(UNPRIVILEGED_UID) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) target cuprumd/_native*.so
