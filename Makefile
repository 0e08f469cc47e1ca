# blobwriter: `make run` serves the API on Azurite, `make test` runs the whole suite.
# Both set up everything on first use: a venv from requirements, Azurite from npm.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP   := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# checkov pins old versions of shared packages (packaging<24), so the Bicep checks get a venv of their own.
INFRA_VENV  := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install install-app run func-azurite lock test test-fast lint bench bench-full bench-tools clean

# install-app: what serving needs (the venv and Azurite); install adds the Bicep checks' venv, for the tests.
install-app: $(PY_STAMP) $(NODE_STAMP)

install: install-app $(INFRA_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet -e ".[serve,query]"
	touch $@

$(INFRA_STAMP): requirements-infra.txt
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(INFRA_VENV)/bin/python -m pip install --quiet -r requirements-infra.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## run: Azurite + a development key + `blobwriter serve` on 127.0.0.1:7071 (Ctrl-C stops both)
run: install-app
	$(BIN)/python scripts/run_local.py

## func-azurite: Azurite blob+queue+table on 127.0.0.1:10100-10102 for `func start --port 7072` (Ctrl-C stops it)
func-azurite: install-app
	$(BIN)/python scripts/func_azurite.py

## lock: pin requirements.txt (what Azure Functions installs) from requirements.in
lock: $(PY_STAMP)
	$(BIN)/python scripts/lock_requirements.py

## test: the whole suite against a real Azurite (started by the tests unless BLOBWRITER_TEST_AZURITE is set)
test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## test-fast: the suite without the slow tests
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

## bench: the quick benchmark (~10 min); writes docs/BENCHMARKS.md, bench/results.json, docs/bench-*.png
bench: install bench-tools
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	$(BIN)/python -m bench --quick
	$(BIN)/python -m bench.query --quick

## bench-full: 20-60 s windows, every peer at every store latency, a 60 s outage, the fleet at 1.5 s too (~40 min)
bench-full: install bench-tools
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	$(BIN)/python -m bench --full
	$(BIN)/python -m bench.query --full

## bench-tools: the bench's HTTP load generators from Debian, as root: wrk (closed loop, the throughput runs) and hey (a fixed rate, the isolation runs)
bench-tools:
	@{ command -v wrk >/dev/null 2>&1 && command -v hey >/dev/null 2>&1; } || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq wrk hey >/dev/null || true; fi; }
	@command -v wrk >/dev/null 2>&1 || echo "bench: wrk not installed (not root?); using the slower Python load generator"
	@command -v hey >/dev/null 2>&1 || echo "bench: hey not installed (not root?); isolation is measured at saturation only"

clean:
	rm -rf $(VENV) $(INFRA_VENV) node_modules .pytest_cache .ruff_cache
