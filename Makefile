# canaryws — the two commands of the README quick start, plus their building blocks and the benchmark.
#   make serve   run the service on the embedded default (flags/features.json, ./data)
#   make test    lint (ruff), type-check (mypy) and run the whole test suite (pytest)
# Both install what they need first: a pinned uv in .tools/, then the locked environment in .venv/.

SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := .tools/bin/uv
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck install services system-deps asyncapi-cli

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet
	touch $@

install: .venv/.synced

serve: install
	$(UV) run --frozen --no-sync canaryws serve $(SERVE_ARGS)

# ruff, and the architecture (import-linter's contracts in pyproject.toml: imports only point down
# the layers, and canaryws.core imports no framework, no OpenTelemetry and no I/O module)
lint: install
	$(UV) run --frozen --no-sync ruff check src tests bench
	$(UV) run --frozen --no-sync lint-imports

typecheck: install
	$(UV) run --frozen --no-sync mypy

# The AsyncAPI CLI that validates docs/asyncapi.yaml (tests/unit/test_asyncapi.py): npm @asyncapi/cli,
# pinned in tools/asyncapi/package-lock.json, installed into tools/asyncapi/node_modules when missing or
# when the lock changed (a stamp holds the lock's hash); one installer at a time.
ASYNCAPI_DIR := tools/asyncapi
asyncapi-cli:
	@set -e; exec 8<$(ASYNCAPI_DIR)/package-lock.json; flock -w 600 8; \
	want="$$(sha256sum <$(ASYNCAPI_DIR)/package-lock.json | cut -d' ' -f1)"; \
	stamp=$(ASYNCAPI_DIR)/node_modules/.canaryws-lock.sha256; \
	if [[ -x $(ASYNCAPI_DIR)/node_modules/.bin/asyncapi && -f $$stamp && "$$(cat $$stamp)" == "$$want" ]]; then exit 0; fi; \
	echo "installing @asyncapi/cli into $(ASYNCAPI_DIR)/node_modules (npm ci)..."; \
	(cd $(ASYNCAPI_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error); \
	printf '%s\n' "$$want" >$$stamp

# Later integration tests use the machine's PostgreSQL; start it if it is installed but stopped.
services:
	@if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; fi

# Tests also run nginx (the replicas' load balancer), promtool (the alert rules) and a headless
# Chromium (the report page): Debian's packages nginx-light, prometheus and chromium, installed
# here when missing (needs root and apt-get). An install that was interrupted before (a killed run
# leaves packages unpacked but not configured, and apt-get then refuses everything) is finished
# first with dpkg --configure -a; apt-get waits up to 10 minutes for another's lock.
system-deps:
	@missing=""; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		dpkg --configure -a; \
		apt-get update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $$missing; \
	fi

test: install services system-deps asyncapi-cli lint typecheck
	$(UV) run --frozen --no-sync pytest $(PYTEST_ARGS)

# The benchmark (bench/run.py, see its docstring, then the storm below): canaryws against its bounds, about 20 minutes.
#   make bench BENCH_ARGS="--quick"   smoke run; also --check, --json PATH, --markdown PATH, --no-scale
BENCH_ARGS ?=
.PHONY: bench bench-guard
bench: install
	.venv/bin/python bench/run.py $(BENCH_ARGS)
	.venv/bin/python bench/storm.py $(STORM_ARGS)

# The reconnect storm alone (bench/storm.py, part of `make bench`; about 3 minutes): 5,000 connections
# closed by a restart (1012) come back with the SDK's back-off, for lean and canaryws.
#   make bench-storm STORM_ARGS="--connections 500 --rounds 1"   a quicker look
STORM_ARGS ?=
.PHONY: bench-storm
bench-storm: install
	.venv/bin/python bench/storm.py $(STORM_ARGS)

# The guard's error rates, by simulation (bench/guard_simulation.py; method and results in docs/guard.md):
# false rollbacks per guard-week and the time to roll back a tripled rate, about 12 minutes.
#   make bench-guard GUARD_ARGS="--weeks 20 --runs 10"   a quick run
GUARD_ARGS ?=
bench-guard: install
	.venv/bin/python bench/guard_simulation.py $(GUARD_ARGS)

# The rollout controller's decisions, by simulation (bench/rollout_simulation.py; method and results in
# docs/rollout.md): false rollbacks per rollout, time to complete, pauses of thin steps, and where a
# tripled rate is rolled back, over four fleet sizes; about 5 minutes.
#   make bench-rollout ROLLOUT_ARGS="--quick"   a smoke run; also --json PATH, --healthy N, --fleets ...
ROLLOUT_ARGS ?=
.PHONY: bench-rollout
bench-rollout: install
	.venv/bin/python bench/rollout_simulation.py $(ROLLOUT_ARGS)

# Hostile clients (bench/hostile.py; results in docs/benchmarks.md, "Worst-case frames"): the CPU of
# the most expensive frames, and a victim's round trip while one client id sends them at its limits.
#   make bench-hostile HOSTILE_ARGS="--quick"   a smoke run
HOSTILE_ARGS ?=
.PHONY: bench-hostile
bench-hostile: install
	.venv/bin/python bench/hostile.py $(HOSTILE_ARGS)
