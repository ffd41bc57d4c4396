# The README's two commands: `make book` and `make test`. Both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A pinned torch: on this project's CPU machines pip takes the CPU build from local disk; on a GPU machine
# PyPI's wheel of the same version is a CUDA build. Override e.g. `make test TORCH_SPEC="torch==2.5.1"`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp

.PHONY: book test lint clean help

help:
	@echo "make book   build the HTML book into _build/html, executing every chapter"
	@echo "make test   pytest on tests/ and fmlib's doctests, nbval over book/, notebooks stripped"
	@echo "make lint   ruff on fmlib/ and tests/"
	@echo "make clean  remove _build/"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned, so that nothing below can pull another (multi-GB) build
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[book,test,dev]"
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going

test: $(STAMP)
	$(BIN)/python -m pytest tests fmlib --doctest-modules
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env book/
	$(BIN)/nbstripout --verify book/*.ipynb

lint: $(STAMP)
	$(BIN)/ruff check fmlib tests

clean:
	rm -rf _build
