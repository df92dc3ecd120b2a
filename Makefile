# ksmreplay developer tasks; `make help` lists them.
#
# Everything runs in the virtual environment .venv, made with $(PYTHON) -m venv
# on first use.  Installing (editable; setup.py builds the native core in
# place) is remembered by stamp files in .venv, so a second run installs (and
# downloads) nothing unless pyproject.toml, setup.py or the native sources changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
STAMP := $(VENV)/.installed
PLOT_STAMP := $(VENV)/.installed-plot
TEST_STAMP := $(VENV)/.installed-test
LINT_PATHS := ksmreplay tests bench traces setup.py
NATIVE := setup.py $(wildcard native/*.c native/*.h)

.DEFAULT_GOAL := help
.PHONY: help demo test test-qemu kernels lint fmt typecheck golden install-check bench fuzz clean distclean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(NATIVE) | $(PY)
	$(PIP) install -e .
	touch $@

$(PLOT_STAMP): pyproject.toml $(NATIVE) | $(PY)
	$(PIP) install -e '.[plot]'
	touch $@ $(STAMP)

# The tests install the plot extra too, so that `ksmreplay plot` is tested.
$(TEST_STAMP): pyproject.toml $(NATIVE) | $(PY)
	$(PIP) install -e '.[test,plot]'
	touch $@ $(STAMP) $(PLOT_STAMP)

DEMO_HTML := demo.html

demo: $(PLOT_STAMP) ## Replay the demo trace (legacy and unshare side by side), plot it to demo.html
	$(PY) -m ksmreplay run traces/demo.msgpack
	$(PY) -m ksmreplay run traces/demo.msgpack --every 1ms --format json \
		| $(PY) -m ksmreplay plot - -o $(DEMO_HTML)
	@echo "demo: the demo trace's sharing over time is in $(CURDIR)/$(DEMO_HTML)"

test: $(TEST_STAMP) ## Run the whole test suite (one worker per CPU; the live-kernel tests in one)
	$(PY) -m pytest -n auto --dist loadgroup

test-qemu: $(TEST_STAMP) ## Boot qemu guests (Linux 6.1, 6.12) on a scenario; needs qemu-system-x86 and `make kernels`
	KSMREPLAY_TEST_QEMU=1 $(PY) -m pytest tests/test_qemu.py

kernels: $(STAMP) ## Fetch Debian's 6.1 and 6.12 kernel images for test-qemu (apt, private lists)
	$(PY) tests/qemu_kernels.py

lint: $(TEST_STAMP) ## Check style (ruff) and types (mypy --strict)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m mypy

fmt: $(TEST_STAMP) ## Reformat the sources (ruff format)
	$(PY) -m ruff format $(LINT_PATHS)

typecheck: $(TEST_STAMP) ## Check types only (mypy --strict)
	$(PY) -m mypy

golden: $(TEST_STAMP) ## Rewrite the golden files from the code (review the diff!)
	KSMREPLAY_UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/test_cases.py tests/test_render.py tests/test_v6.py

install-check: ## Install as users do (a wheel, fresh venv), with and without a C compiler
	$(PYTHON) tests/install_check.py

FUZZ_N ?= 10000
FUZZ_SEED ?= 0
FUZZ_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
FUZZ_OUT ?= fuzz-out
FUZZ_SECONDS ?=
ATHERIS_SECONDS ?= 300

fuzz: $(TEST_STAMP) ## Fuzz every command (FUZZ_N mutants, default 10000), then the reader with atheris
	@status=0; \
	$(PY) tests/fuzzer.py -n $(FUZZ_N) --seed $(FUZZ_SEED) -j $(FUZZ_JOBS) --out $(FUZZ_OUT) \
		$(if $(FUZZ_SECONDS),--seconds $(FUZZ_SECONDS)) || status=1; \
	if $(PY) -c 'import atheris' 2>/dev/null || $(PIP) install atheris; then \
		$(PY) tests/fuzz_reader.py --seconds $(ATHERIS_SECONDS) --out $(FUZZ_OUT)/atheris || status=1; \
		if ls $(FUZZ_OUT)/atheris/finding-*.txt >/dev/null 2>&1; then \
			echo "atheris findings:"; head -qn 2 $(FUZZ_OUT)/atheris/finding-*.txt; status=1; \
		else echo "atheris: no findings in $(ATHERIS_SECONDS) s"; fi; \
	else \
		echo "atheris does not install here: no coverage-guided fuzzing"; \
	fi; \
	exit $$status

bench: $(STAMP) ## Measure trace reading and simulation speed (bench/run.py)
	$(PY) bench/run.py

clean: ## Remove caches and build leftovers (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis fuzz-out $(DEMO_HTML)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## Also remove the virtual environment
	rm -rf $(VENV)
