# Sluice: `make demo` replays the incident; `make test` lints, type-checks and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv lint lint-deploy typecheck test demo figures sweep fleet run bench soak clean

help:
	@echo "make demo   incident replay: unprotected vs protected, table + plot"
	@echo "make figures  acceptance figures (issues 4, 5, 15): sluice arm, 22 runs, PASS/FAIL (~14 min)"
	@echo "make sweep  storm sweep (issue 16): seeds 1-40 drawn at random, sluice arm, PASS/FAIL (~37 min)"
	@echo "make fleet  fleet replay (issue 18): K = 1, 3, 5 sidecars behind HAProxy sharing state on Redis, the K table (~25 min)"
	@echo "make test   lint, type-check and run the test suite"
	@echo "make lint   ruff (format check + lint) and mypy only"
	@echo "make lint-deploy  promtool, hadolint and kubernetes-validate on deploy/ and the Dockerfile"
	@echo "make run    run the proxy on config/sluice.yaml"
	@echo "make bench  per-request CPU benchmark (loadtest/bench.py)"
	@echo "make soak   10-minute soak with storms and reloads"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The runtime dependencies at the image's exact versions (requirements.lock) as constraints;
# their hashes are dropped, since a hash in a constraints file turns on hash checking for every
# package, the dev tools included, and those are not locked.
$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	sed -e '/--hash=/d' -e 's/ *\\$$//' requirements.lock > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check proxy tests loadtest
	$(BIN)/ruff check proxy tests loadtest
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

# The deploy files through the tools operators run on them. hadolint and kubernetes-validate
# come from PyPI with `.[dev]`; promtool is Go and not on PyPI: Debian's `prometheus` package
# has it (.ci/run installs it as root). Without it a dev machine skips that check and says so;
# in CI (CI set, as .ci/run does) a missing promtool fails the target.
# What a fresh Sluice's /metrics serves, for `promtool check metrics`.
EXPOSITION := import sys, prometheus_client as p, proxy.ops.metrics as m; \
	sys.stdout.buffer.write(p.generate_latest(m.Metrics(["a"]).registry))

lint-deploy: $(STAMP)
	@if command -v promtool >/dev/null 2>&1; then \
		echo "promtool check rules deploy/prometheus-alerts.yaml"; \
		promtool check rules deploy/prometheus-alerts.yaml || exit 1; \
		echo "promtool check metrics < the exposition of proxy.ops.metrics.Metrics"; \
		$(BIN)/python -c '$(EXPOSITION)' | promtool check metrics || exit 1; \
	elif [ -n "$$CI" ]; then \
		echo "lint-deploy: promtool is missing in CI: .ci/run installs it (apt-get install prometheus)" >&2; \
		exit 1; \
	else \
		echo "" >&2; \
		echo "lint-deploy: WARNING: promtool not found: deploy/prometheus-alerts.yaml was NOT checked" >&2; \
		echo "lint-deploy: (Debian/Ubuntu: apt-get install --no-install-recommends prometheus)" >&2; \
		echo "" >&2; \
	fi
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --strict deploy/sidecar-pod.yaml

test: lint lint-deploy
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m loadtest demo

figures: $(STAMP)
	$(BIN)/python -m loadtest figures

# Not part of `make test`: 40 runs of the sluice arm, seeds 1-40 fixed.
sweep: $(STAMP)
	$(BIN)/python -m loadtest sweep --runs 40

# Not part of `make test`: needs haproxy and redis-server on PATH (Debian packages; .ci/run
# installs them). One run per cell, K = 1 on the first balancer only.
fleet: $(STAMP)
	$(BIN)/python -m loadtest fleet-table --fleet 1,3,5 --lb roundrobin,leastconn \
		--scenarios reopen,backend-outage --profiles sdk,naive --fleet-redis

run: $(STAMP)
	$(BIN)/sluice --config config/sluice.yaml

bench: $(STAMP)
	$(BIN)/python -m loadtest.bench

soak: $(STAMP)
	$(BIN)/python -m loadtest.soak

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache loadtest/out
