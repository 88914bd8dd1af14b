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

.PHONY: help env browser book test test-fast test-gpu lock clean generate check-release collect grade feedback export grading-limits gpu-wheels gpu-check
help:
	@sed -n '3,5p' Makefile

env:
	@bash tools/ensure-env.sh

# Headless Chromium and CJK fonts for tests/test_browser.py (Debian packages,
# installed when missing and running as root; otherwise the test is skipped).
browser:
	@bash tools/ensure-browser.sh

book: env
	@rm -f _build/.book-ok
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going
	@touch _build/.book-ok
	@echo "Open _build/html/index.html"

test: env browser
	$(PY) -m pytest $(PYTEST_ARGS) --durations=15

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

# ---- Instructor workflow ----
# nbgrader's verbs on this course (see autograder/README.md):
#   make generate [ASSIGNMENT=a02_rnn_from_scratch]   solutions/ -> assignments/ (+ gradebook entry)
#   make check-release                                fail if assignments/ differs from a fresh generation
#   make collect ASSIGNMENT=a01_... [ZIP=lms.zip]     LMS zip -> submitted/<student>/<assignment>/
#   make grade ASSIGNMENT=a01_... [WORKERS=N] [DEVICE=cuda] [ALLOW_WEAK_ISOLATION=1]   sandboxed engine -> gradebook.db + autograded/
#              [CLUSTER=ray [RAY_ADDRESS=auto|ray://host:port]]   on a Ray cluster (default: a local Ray instance)
#   make feedback ASSIGNMENT=a01_...                  feedback/<student>/<assignment>/*.html
#   make export                                       grades.csv
ASSIGNMENT ?=
WORKERS ?=
DEVICE ?= cpu
CLUSTER ?= local
ZIP ?=
# Student ids come from the LMS's layout: a folder per student (<id>/...ipynb) or a
# file-name prefix (<id>_...ipynb). Override with a regexp that has a (?P<student_id>...) group.
COLLECT_REGEXP ?=
NBGRADER := PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/nbgrader

define need_assignment
	@if [ -z "$(ASSIGNMENT)" ]; then echo "set ASSIGNMENT=aNN_name (one of: $$(ls solutions | tr '\n' ' '))"; exit 2; fi
endef

generate: env
	$(PY) -m autograder.workflow generate $(ASSIGNMENT)

check-release: env
	$(PY) -m autograder.workflow check-release $(ASSIGNMENT)

collect: env
	$(need_assignment)
	@if [ -n "$(ZIP)" ]; then \
	  $(PY) -m autograder collect $(ASSIGNMENT) "$(ZIP)" $(if $(COLLECT_REGEXP),--regexp '$(COLLECT_REGEXP)'); \
	else \
	  ls -d submitted/*/$(ASSIGNMENT) 2>/dev/null | sed 's|^|collected: |' || echo "no submissions of $(ASSIGNMENT) under submitted/"; \
	fi

grade: env
	$(need_assignment)
	$(PY) -m autograder grade $(ASSIGNMENT) --device $(DEVICE) --cluster $(CLUSTER) $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(filter 1 yes true,$(ALLOW_WEAK_ISOLATION)),--allow-weak-isolation)

feedback: env
	$(need_assignment)
	$(NBGRADER) generate_feedback $(ASSIGNMENT) --force

export: env
	$(NBGRADER) export

grading-limits: env
	$(PY) -m autograder limits | tee /dev/stderr | grep -q '"missing": \[\]' \
	  || { echo "the sandbox's isolation does not fully hold here (see \"missing\" above)"; exit 1; }

# ---- GPU acceptance (see autograder/README.md) ----
#   make gpu-wheels [GPU_PY_VERSION=3.12]   here, with network: wheels for the GPU machine's Python
#   make gpu-check [GPU_PYTHON=python3]     there, with its own PyTorch and no network
GPU_PYTHON ?= python3
GPU_PY_VERSION ?= 3.12
GPU_WHEELS ?= wheels/gpu
GPU_SITE := _build/gpu-site

gpu-wheels:
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	python3 -m pip download -q --disable-pip-version-check --dest $(GPU_WHEELS) --only-binary=:all: \
	  --python-version $(GPU_PY_VERSION) --implementation cp --platform manylinux2014_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	  $$(grep -v -e '^#' -e '^jieba' tools/gpu-requirements.txt) setuptools wheel
	python3 -m pip download -q --disable-pip-version-check --dest $(GPU_WHEELS) --no-deps --no-binary=:all: jieba==0.42.1
	@du -sh $(GPU_WHEELS)

gpu-check:
	@if [ -n "$(GPU_WHEELS)" ]; then rm -rf $(GPU_SITE) && \
	  $(GPU_PYTHON) -m pip install -q --disable-pip-version-check --no-index --find-links $(GPU_WHEELS) \
	    --target $(GPU_SITE) -r tools/gpu-requirements.txt; fi
	PYTHONPATH=$(CURDIR):$(CURDIR)/$(GPU_SITE) $(GPU_PYTHON) tools/gpu_check.py
