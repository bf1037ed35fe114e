# Sluice: `make demo` replays the incident; `make test` lints, type-checks and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv lint typecheck test demo figures sweep run bench soak clean

help:
	@echo "make demo   incident replay: unprotected vs protected, table + plot"
	@echo "make figures  acceptance figures (issues 4, 5, 15): sluice arm, 22 runs, PASS/FAIL (~14 min)"
	@echo "make sweep  storm sweep (issue 16): seeds 1-40 drawn at random, sluice arm, PASS/FAIL (~37 min)"
	@echo "make test   lint, type-check and run the test suite"
	@echo "make lint   ruff (format check + lint) and mypy only"
	@echo "make run    run the proxy on config/sluice.yaml"
	@echo "make bench  per-request CPU benchmark (loadtest/bench.py)"
	@echo "make soak   10-minute soak with storms and reloads"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check proxy tests loadtest
	$(BIN)/ruff check proxy tests loadtest
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m loadtest demo

figures: $(STAMP)
	$(BIN)/python -m loadtest figures

# Not part of `make test`: 40 runs of the sluice arm, seeds 1-40 fixed.
sweep: $(STAMP)
	$(BIN)/python -m loadtest sweep --runs 40

run: $(STAMP)
	$(BIN)/sluice --config config/sluice.yaml

bench: $(STAMP)
	$(BIN)/python -m loadtest.bench

soak: $(STAMP)
	$(BIN)/python -m loadtest.soak

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache loadtest/out
