# Preloop — run `make help` for the list of targets.
SHELL := /bin/bash
MAKEFLAGS += --no-print-directory
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
NPM_STAMP := tests/interop/node_modules/.package-lock.json
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help install run test check bench clean services openapi

help: ## Show this help
	@echo "Preloop make targets:"
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-9s\033[0m %s\n", $$1, $$2}'

# Installs are quiet: pip's output goes to $(VENV)/install.log and is shown only when it fails.
PIP_QUIET = > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; echo "install failed (log: $(VENV)/install.log)"; exit 1; }

$(BIN)/python:
	@echo "Creating $(VENV) and installing Preloop (first run only)..."
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip $(PIP_QUIET)

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	@$(BIN)/pip install --quiet -e . $(PIP_QUIET)
	@touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	@$(BIN)/pip install --quiet -e '.[test,dev]' $(PIP_QUIET)
	@touch $@ $(STAMP_RUN)

$(NPM_STAMP): tests/interop/package.json tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
	@touch $@

# The e2e tests drive Debian's Chromium (Playwright's own browser download is not used).
# A machine without apt skips them locally; with CI=true they fail instead.
$(CHROMIUM):
	-$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

install: $(STAMP_RUN) ## Create .venv and install Preloop (leaves .venv/bin/preloop ready)

# Startup logs stay below warnings here, so the box with the logins and URLs is the last thing printed.
run: install ## Start the embedded hub (SQLite + embedded Redis + worker + gateway) with a demo
	@PRELOOP_LOG_LEVEL=$${PRELOOP_LOG_LEVEL:-warning} $(BIN)/preloop serve

# The suite runs in TEST_WORKERS processes (pytest-xdist, a file per worker at a time); each worker
# has its own PostgreSQL database and Redis db (PRELOOP_TEST_REDIS_URL's db + worker number).
TEST_WORKERS ?= 2
test: $(STAMP_TEST) $(NPM_STAMP) $(CHROMIUM) ## Install what tests need and run the whole suite
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

check: $(STAMP_TEST) ## Lint (ruff) and type-check (mypy --strict)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP_TEST) $(NPM_STAMP) ## Run every benchmark; each ends with one RESULT line
	@set -e; for script in bench/[!_]*.py; do echo "== $$script"; $(BIN)/python $$script; done

openapi: $(STAMP_RUN) ## Regenerate docs/openapi.json from the app (commit it with the API change)
	$(BIN)/python -m backend.openapi docs/openapi.json

services: ## Start the local PostgreSQL and Redis if they are not running (test machines)
	bash .ci/services

clean: ## Remove the virtualenv, caches and the embedded data dir
	rm -rf $(VENV) .preloop .pytest_cache .mypy_cache .ruff_cache tests/interop/node_modules
