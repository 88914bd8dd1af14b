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

.PHONY: help env book test test-fast test-gpu lock clean generate check-release collect grade feedback export grading-limits
help:
	@sed -n '3,5p' Makefile

env:
	@bash tools/ensure-env.sh

book: env
	@rm -f _build/.book-ok
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going
	@echo "Open _build/html/index.html"

test: env
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
#   make feedback ASSIGNMENT=a01_...                  feedback/<student>/<assignment>/*.html
#   make export                                       grades.csv
ASSIGNMENT ?=
WORKERS ?=
DEVICE ?= cpu
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
	$(PY) -m autograder grade $(ASSIGNMENT) --device $(DEVICE) $(if $(WORKERS),--workers $(WORKERS)) $(if $(filter 1 yes true,$(ALLOW_WEAK_ISOLATION)),--allow-weak-isolation)

feedback: env
	$(need_assignment)
	$(NBGRADER) generate_feedback $(ASSIGNMENT) --force

export: env
	$(NBGRADER) export

grading-limits: env
	$(PY) -m autograder limits
