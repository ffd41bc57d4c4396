# The README's two commands: `make book` and `make test`. Both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A pinned torch: on this project's CPU machines pip takes the CPU build from local disk; on a GPU machine
# PyPI's wheel of the same version is a CUDA build. Override e.g. `make test TORCH_SPEC="torch==2.5.1"`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
# Test processes (pytest-xdist): one per CPU; each test and chapter runs on one thread. nbval keeps the cells of a
# notebook together, in order, on one process (--dist loadfile). `make test TEST_WORKERS=1` runs them one by one.
TEST_WORKERS ?= auto
# torchcfm and flow_matching, for the benchmark and its smoke test: --no-deps, because torchcfm's dependencies
# pull torchvision and with it another (CUDA) torch; their cores need only torch, numpy and POT.
BENCH_STAMP := $(VENV)/.bench-stamp
# MathJax is served from the book itself (_config.yml: html_static_path, mathjax_path), so that the built book
# renders its equations without a CDN; npm fetches the pinned release once (see the `mathjax` rule at the end).
# Without npm (and without a copy fetched earlier), `make book` builds with _build/_config_cdn.yml: the same
# configuration minus those two settings, so the pages load Sphinx's default MathJax from its CDN.
MATHJAX_VERSION := 3.2.2
MATHJAX_JS := _build/mathjax/mathjax/tex-mml-chtml.js
CDN_CONFIG := _build/_config_cdn.yml
ifeq ($(wildcard $(MATHJAX_JS))$(shell command -v npm 2>/dev/null),)
BOOK_MATHJAX := $(CDN_CONFIG)
BOOK_FLAGS := --config $(CDN_CONFIG)
else
BOOK_MATHJAX := $(MATHJAX_JS)
BOOK_FLAGS :=
endif
# `make gpu-test` runs in .venv (PYTHON_ENV=venv, the default: PyPI's torch, a CUDA build on Linux) or in the Python
# named by PYTHON as it is (PYTHON_ENV=system: its own CUDA torch is kept; only missing pure-Python requirements are
# installed, with torch pinned to the version already there, and fmlib is imported from this checkout).
PYTHON_ENV ?= venv
ifeq ($(PYTHON_ENV),venv)
GPU_PY := $(BIN)/python
GPU_STAMP := $(STAMP)
GPU_ENV :=
else ifeq ($(PYTHON_ENV),system)
GPU_PY := $(PYTHON)
GPU_STAMP := _build/.system-requirements-stamp
GPU_ENV := PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}"
else
$(error PYTHON_ENV must be venv or system, got "$(PYTHON_ENV)")
endif

.PHONY: book test lint bench gpu-test clean help mathjax browser-test book-student browser-test-student

help:
	@echo "make book      build the HTML book into _build/html, executing every chapter (npm optional)"
	@echo "make test      pytest on tests/ and fmlib's doctests, nbval over book/, notebooks stripped (one test"
	@echo "               process per CPU: TEST_WORKERS=1 for one)"
	@echo "make lint      ruff on fmlib/, tests/, benchmarks/, tools/, examples/, the chapters and labs, mypy"
	@echo "make bench     the benchmarks the book reads, in sequence: compare_2d (fmlib beside torchcfm and"
	@echo "               flow_matching, 15-35 min), couplings (what a minibatch OT coupling costs, 10-25 min),"
	@echo "               training_recipes (schedules, EMA, time sampling, 1.5 h), training_scale (train's"
	@echo "               overhead, precision, compile, processes, 10 min), discrete (beside flow_matching's"
	@echo "               discrete solver), few_step (MeanFlow, shortcut, distillation, reflow against the floor),"
	@echo "               few_step_digits (the same on the 8x8 digits with guidance; writes checkpoints),"
	@echo "               images (U-Net, DiT and latent DiT on MNIST-5k beside torchcfm; writes the checkpoints"
	@echo "               of chapter 13)"
	@echo "make gpu-test  on a CUDA machine: a CUDA smoke check, then every chapter with nbval, timed"
	@echo "               (PYTHON_ENV=system PYTHON=python3: use that Python and its own CUDA torch, no venv)"
	@echo "make clean     remove _build/"
	@echo "make browser-test  open every page of _build/html in headless Chromium (run make book first)"
	@echo "make book-student  the student edition (no solutions) into _build/student/html, from the notebooks"
	@echo "               make book executed (runs make book first if _build/html is missing)"
	@echo "make browser-test-student  search the student edition's HTML for solution text"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned, so that nothing below can pull another (multi-GB) build
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[book,test,dev]"
	touch $(STAMP)

book: $(STAMP) $(BOOK_MATHJAX)
	@$(if $(BOOK_FLAGS),echo "npm not found: the book loads MathJax from its default CDN (install npm for an offline copy)")
	$(BIN)/jupyter-book build . -W -n --keep-going $(BOOK_FLAGS)

$(CDN_CONFIG): _config.yml
	mkdir -p $(dir $@)
	$(BIN)/python tools/mathjax_cdn_config.py _config.yml $@

$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt benchmarks/constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -c benchmarks/constraints.txt -r benchmarks/requirements.txt
	$(BIN)/python -c "import torch, torchcfm, flow_matching; v = torch.__version__.split('+')[0]; assert '$(TORCH_SPEC)'.endswith(v), v"
	touch $(BENCH_STAMP)

# The benchmarks behind book/benchmarks.ipynb (and chapters 9, 10, 13 and few-step), one after the other, each
# writing benchmarks/results/NAME.json. Wall times of the stored runs, each alone on one core: compare_2d 13 min,
# couplings 4 min, training_recipes 26 min (the recipes of RECIPES_ARGS, all three tasks), training_scale 5 min,
# discrete 5 min, few_step 8 min, few_step_digits 12 min, images 54 min (plus --guidance-sweep, 6 min): about
# two hours in all.
RECIPES_ARGS := --recipes constant_3e-3 constant cosine ema default default_logit_normal
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/compare_2d.py
	$(BIN)/python benchmarks/couplings.py
	$(BIN)/python benchmarks/training_recipes.py $(RECIPES_ARGS)
	$(BIN)/python benchmarks/training_scale.py
	$(BIN)/python benchmarks/discrete.py
	$(BIN)/python benchmarks/few_step.py
	$(BIN)/python benchmarks/few_step_digits.py
	$(BIN)/python benchmarks/images.py
	$(BIN)/python benchmarks/images.py --guidance-sweep

test: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests fmlib --doctest-modules
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --nbval-lax --nbval-current-env book/
	$(BIN)/nbstripout --verify book/*.ipynb templates/*.ipynb labs/*.ipynb labs/solutions/*.ipynb

lint: $(STAMP)
	$(BIN)/ruff check fmlib tests benchmarks tools examples book templates labs
	$(BIN)/ruff format --check fmlib tests benchmarks tools examples book templates labs
	$(BIN)/mypy fmlib

# What .github/workflows/gpu.yml runs: the CUDA smoke check (tools/cuda_smoke.py), then every chapter with nbval,
# with per-chapter times in _build/nbval-gpu.md (tools/nbval_summary.py), written even when a chapter fails.
_build/.system-requirements-stamp: pyproject.toml
	mkdir -p _build
	$(PYTHON) tools/system_requirements.py --install
	touch $@

gpu-test: $(GPU_STAMP)
	$(GPU_ENV) $(GPU_PY) tools/cuda_smoke.py
	mkdir -p _build
	status=0; set -o pipefail; \
	$(GPU_ENV) $(GPU_PY) -m pytest --nbval-lax --nbval-current-env book/ --durations=0 -o junit_family=xunit1 \
	  --junitxml=_build/nbval-gpu.xml 2>&1 | tee _build/nbval-gpu.log || status=$$?; \
	$(GPU_PY) tools/nbval_summary.py _build/nbval-gpu.xml \
	  --title "Chapters on $$($(GPU_PY) -c 'import torch; print(torch.cuda.get_device_name(0))')" \
	  | tee _build/nbval-gpu.md; \
	exit $$status

clean:
	rm -rf _build

# MathJax $(MATHJAX_VERSION) from the npm registry (`npm pack` fetches the tarball, runs nothing), cut down to the
# TeX+MathML CHTML component and the files it loads on demand (TeX extensions, fonts, menu, accessibility).
$(MATHJAX_JS):
	@command -v npm >/dev/null || { echo "make mathjax needs npm to fetch MathJax $(MATHJAX_VERSION) once"; exit 1; }
	rm -rf _build/mathjax && mkdir -p _build/mathjax/mathjax
	cd _build/mathjax && npm pack --silent "mathjax@$(MATHJAX_VERSION)" >/dev/null
	tar xzf _build/mathjax/mathjax-$(MATHJAX_VERSION).tgz -C _build/mathjax/mathjax --strip-components=1 package/LICENSE
	tar xzf _build/mathjax/mathjax-$(MATHJAX_VERSION).tgz -C _build/mathjax/mathjax --strip-components=2 \
	  package/es5/tex-mml-chtml.js package/es5/input/tex/extensions package/es5/input/mml \
	  package/es5/output/chtml/fonts package/es5/ui package/es5/a11y package/es5/sre
	rm _build/mathjax/mathjax-$(MATHJAX_VERSION).tgz
	test -s $(MATHJAX_JS)

mathjax: $(MATHJAX_JS)

# Headless Chromium over the built book (tools/browser_test.py) at 1280 x 900: math rendered, no raw TeX, display
# equations, code cells, outputs and tables within the column (and at 400 px, display equations within a phone's
# column), every figure at >= 1 px per point, no visible check output, images loaded, no
# tracebacks, nothing from a CDN, table-of-contents links alive, search works; screenshots at 1280 and 400 px in
# _build/screenshots/, figure densities and wide equations in _build/browser-report.json. Run `make book` first.
# Playwright drives the system's Chromium (Debian: apt-get install chromium); it downloads no browser.
CHROMIUM ?= /usr/bin/chromium
BOOK_HTML ?= _build/html
browser-test: $(STAMP)
	test -f $(BOOK_HTML)/index.html || { echo "no $(BOOK_HTML)/index.html: run make book first"; exit 1; }
	test -x "$(CHROMIUM)" || { echo "no Chromium at $(CHROMIUM): apt-get install chromium, or CHROMIUM=/path/to/chrome"; exit 1; }
	$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[browser]"
	$(BIN)/python tools/browser_test.py $(BOOK_HTML) --chromium "$(CHROMIUM)" --screenshots _build/screenshots \
	  --json _build/browser-report.json

# The student edition: the book without the solutions of its exercises (sphinx-exercise's hide_solutions, and the
# gated solution cells removed) and without the labs' solutions, for an instructor to publish. It executes nothing:
# tools/student_edition.py takes the notebooks that `make book` executed (_build/jupyter_execute/), writes a source
# tree with a generated _config.yml / _toc.yml under _build/student/src/ and builds it into _build/student/html.
# It uses the same base configuration as `make book` (the CDN one without npm).
STUDENT_BASE_CONFIG := $(if $(BOOK_FLAGS),$(CDN_CONFIG),_config.yml)
_build/html/index.html:
	$(MAKE) book

book-student: $(STAMP) _build/html/index.html $(if $(BOOK_FLAGS),$(CDN_CONFIG))
	$(BIN)/python tools/student_edition.py --config $(STUDENT_BASE_CONFIG) --out _build/student

# No solution text in the student edition (tools/student_check.py: the solution class, "Solution to Exercise", links
# to labs/solutions/, and distinctive lines of every gated solution of the chapters); no browser needed.
browser-test-student: $(STAMP)
	test -f _build/student/html/index.html || { echo "no _build/student/html/index.html: run make book-student first"; exit 1; }
	$(BIN)/python tools/student_check.py _build/student/html
