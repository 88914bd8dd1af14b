# Sequence Models: an executable course with graded assignments.
#
#   make book   set up the environment if needed, build the executed HTML book
#   make test   set up the environment if needed, run every test (CPU)
#
# The environment is a venv in .venv, pinned by requirements.lock and reused
# while the lock is unchanged (see tools/ensure-env.sh).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

# Data sets are read from $SEQCOURSE_DATA. When it is unset and an offline
# mirror sits beside the checkout (../shared/data), use that mirror.
ifeq ($(origin SEQCOURSE_DATA), undefined)
ifneq ($(wildcard ../shared/data/README.md),)
export SEQCOURSE_DATA := $(abspath ../shared/data)
endif
endif

PYTEST_ARGS ?= -m "not gpu"

.PHONY: help env book test test-fast test-gpu lock clean
help:
	@sed -n '3,5p' Makefile

env:
	@bash tools/ensure-env.sh

book: env
	@rm -f _build/.book-ok
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going
	@echo "Open _build/html/index.html"

test: env
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the book build, for quick iterations.
test-fast: env
	$(PY) -m pytest -m "not gpu and not book"

# On a machine with a CUDA GPU: every test, the gpu-marked ones included.
test-gpu: env
	$(PY) -m pytest

# Re-resolve the pins after editing requirements.in (needs the network).
lock:
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/pip install -q -r requirements.in
	.venv-lock/bin/pip freeze | grep -v -E '^(d2l|seqcourse)[=@ ]' > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf _build .pytest_cache
