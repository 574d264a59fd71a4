# make demo: install and run the demo.  make test: install everything the tests need and run them all.
# make dist: build the sdist and wheel into dist/ and check their metadata as PyPI would.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# JupyterHub's proxy, from npm, for the tests that stop a server behind it (tests/chp.py finds it here).
CHP := configurable-http-proxy@4
NODE_STAMP := $(VENV)/node/.installed-$(subst @,-,$(CHP))
# Debian's chromium, for the status page test (tests/test_status_page.py drives it over DevTools).
CHROMIUM_STAMP := $(VENV)/.chromium

.PHONY: demo test lint typecheck unit dist bench bench-hub clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

$(NODE_STAMP): | $(BIN)/python
	npm install --prefix $(VENV)/node --no-audit --no-fund --silent $(CHP)
	touch $(NODE_STAMP)

$(CHROMIUM_STAMP): | $(BIN)/python
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	touch $(CHROMIUM_STAMP)

demo: $(STAMP)
	$(BIN)/lamplighter demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(NODE_STAMP) $(CHROMIUM_STAMP)
	$(BIN)/pytest -q

# The sdist is built first and the wheel from it, so a file the sdist forgets breaks the build here.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

test: lint typecheck dist unit

bench: $(STAMP)
	$(BIN)/python bench/bench_watch.py --runs 10 --hold 180
	$(BIN)/python bench/bench_remote.py
	$(BIN)/python bench/bench_signals.py
	$(BIN)/python bench/bench_policy.py

# The hub figures start real hubs and servers (the proxy comes from npm) and take several minutes.
bench-hub: $(STAMP) $(NODE_STAMP)
	$(BIN)/python bench/bench_hub.py --part side --servers 8 --timeout 20
	$(BIN)/python bench/bench_hub.py --part scale --sizes 100,1000
	$(BIN)/python bench/bench_reports.py --n 300

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist
