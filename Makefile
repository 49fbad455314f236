# agentic-mlops: `make demo` and `make test` work on a fresh clone; both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup tools demo down test test-all bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[test]'
	@# empty Prefect and MLflow databases at their schemas: a new home's servers start from them
	$(BIN)/python -c 'from agentic_mlops.stack import prepare_templates as p; p()'
	@touch $(STAMP)

# the local stack (Prefect server and MLflow UI) stays up after the demo: its URLs are printed
# at the end; `make down` stops it
demo: setup
	$(BIN)/agentic-mlops demo

down: setup
	$(BIN)/agentic-mlops down

# two workers, each module on one of them (its module fixtures made once); docs/testing.md
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test: setup tools
	$(PYTEST) -m "not slow"

# the Kubernetes canary reads its metrics from a real Prometheus (Debian's package), as a
# cluster serves them; both test targets install it when it is missing
tools:
	@command -v prometheus >/dev/null || (apt-get update -qq && apt-get install -y -qq prometheus)

test-all: setup tools
	$(PYTEST)

bench: setup
	$(BIN)/python -m benchmarks.run

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m tests.layers

clean:
	-test ! -x $(BIN)/agentic-mlops || $(BIN)/agentic-mlops down
	rm -rf .mlops .pytest_cache .ruff_cache
