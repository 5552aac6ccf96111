# envctl: two commands on a fresh Debian machine.
#   make run    set up, start the services, and show the main job on examples/
#   make test   set up, start the services, lint, type-check and run the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SERVICES_ENV = eval "$$(scripts/services env)"

.PHONY: run test lint typecheck pytest services services-down bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq python3-venv)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[server,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

# The venv comes first: the conda channel is built with its Python (py-rattler).
services: $(STAMP)
	ENVCTL_PYTHON=$(BIN)/python scripts/services up

services-down:
	scripts/services down

run: $(STAMP) services
	@$(SERVICES_ENV) && PATH="$(CURDIR)/$(BIN):$$PATH" examples/run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy bench/hash
	$(BIN)/mypy bench/cli
	$(BIN)/mypy scripts/build-channel
	$(BIN)/mypy scripts/bench-data
	$(BIN)/mypy bench/lookup
	$(BIN)/mypy bench/build
	$(BIN)/mypy bench/serve
	$(BIN)/mypy bench/layer
	$(BIN)/mypy examples/runner/run.py

pytest: $(STAMP) services
	@$(SERVICES_ENV) && $(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP) services
	@$(SERVICES_ENV) && $(BIN)/python bench/hash
	@$(SERVICES_ENV) && $(BIN)/python bench/cli
	@$(SERVICES_ENV) && $(BIN)/python bench/lookup
	@$(SERVICES_ENV) && $(BIN)/python bench/build
	@$(SERVICES_ENV) && $(BIN)/python bench/serve
	@$(BIN)/python bench/layer

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
