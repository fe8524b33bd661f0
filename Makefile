# The one command surface. `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RATE   ?= 2000
# pytest-xdist workers of `make test` and `make test-fast`: three on two cores, as the long tests
# spend much of their time waiting on JVM starts, brokers and producers (docs/benchmarks.md).
WORKERS ?= 3
export LAKEHOUSE_KAFKA_DIR ?= $(CURDIR)/.kafka
export LAKEHOUSE_S3_DIR ?= $(CURDIR)/.s3
# A development-only key so `make run` works out of the box; production sets its own secret.
export LAKEHOUSE_PII_KEY ?= local-development-only-pii-key

.DEFAULT_GOAL := help
.PHONY: help setup browser run serve stop test test-fast lint bench clean

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "error: Java 17 is required (install OpenJDK 17)"; exit 3; }
	@command -v mvn >/dev/null || { echo "error: Maven is required to fetch the JVM jars"; exit 3; }
	@echo "setting up $(VENV): installing the package and its pinned dependencies"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[tools,test]'
	@touch $(STAMP)

setup: $(STAMP) ## create the venv, install the package, fetch the JVM jars (idempotent)
	@echo "python environment up to date: $(VENV)"
	@$(BIN)/python -m streaming.jars fetch

run: setup ## local broker + fleet simulator on every topic + the streams (Ctrl-C stops)
	@$(BIN)/lakehouse kafka start
	@$(BIN)/lakehouse topics create
	@echo "simulator: $(RATE) msg/s over every topic (log: $(LAKEHOUSE_KAFKA_DIR)/producer.log)"
	@bash -c 'trap "kill \$$producer 2>/dev/null; wait" EXIT; \
	  $(BIN)/lakehouse produce all --rate $(RATE) --count 0 --ledger demo.ledger \
	    2> "$(LAKEHOUSE_KAFKA_DIR)/producer.log" & producer=$$!; \
	  $(BIN)/lakehouse run all'

serve: setup ## the query API and live dashboard on http://127.0.0.1:8000/ (no JVM)
	$(BIN)/lakehouse serve

stop: ## stop the local broker
	@$(BIN)/lakehouse kafka stop

# The dashboard's page tests drive a real headless Chromium: Debian's package and its driver.
browser: ## install Chromium and chromedriver (Debian packages) unless present
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver (apt)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver >/dev/null; }
	@chromium --version 2>/dev/null | head -1

# The browser's apt install runs beside the Python and JVM set-up (`-j2`): neither needs the other.
test: ## the whole suite: unit, integration and end-to-end (what CI runs)
	@$(MAKE) --no-print-directory -j2 setup browser
	$(BIN)/pytest -n $(WORKERS) --dist worksteal tests/unit tests/integration tests/e2e

test-fast: setup ## unit and integration tiers only, for the edit-test loop
	$(BIN)/pytest -n $(WORKERS) --dist worksteal tests/unit tests/integration

bench: setup ## the benchmark on the local broker (BENCH="--quick" or any `lakehouse bench` flags)
	@$(BIN)/lakehouse kafka start
	$(BIN)/lakehouse bench $(BENCH)

lint: setup ## ruff (lint + format check) and mypy
	$(BIN)/ruff check streaming tests
	$(BIN)/ruff format --check streaming tests
	$(BIN)/mypy streaming tests

clean: ## remove local tables, checkpoints and broker data (not the venv or jars)
	rm -rf lakehouse checkpoints .kafka .s3 demo.ledger
