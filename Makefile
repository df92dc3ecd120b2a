# ksmreplay developer tasks; `make help` lists them.
#
# Everything runs in the virtual environment .venv, made with $(PYTHON) -m venv
# on first use.  Installing is remembered by stamp files in .venv, so a second
# run installs (and downloads) nothing unless pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
LINT_PATHS := ksmreplay tests bench traces

.DEFAULT_GOAL := help
.PHONY: help demo test test-qemu kernels lint fmt typecheck bench clean distclean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP) install -e '.[test]'
	touch $@ $(STAMP)

demo: $(STAMP) ## Replay the bundled demo trace (legacy and unshare side by side)
	$(PY) -m ksmreplay run traces/demo.msgpack

test: $(TEST_STAMP) ## Run the whole test suite
	$(PY) -m pytest

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

bench: $(STAMP) ## Measure trace reading and simulation speed (bench/run.py)
	$(PY) bench/run.py

clean: ## Remove caches and build leftovers (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## Also remove the virtual environment
	rm -rf $(VENV)
