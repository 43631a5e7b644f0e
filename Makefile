# The two commands a new user runs: `make demo` and `make test`.
# Every target bootstraps its own virtual environment in .venv.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

.PHONY: install demo test bench ui lint format postgres clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: python3.11 (or python3 >= 3.11) not found on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)  ## Create .venv and install the project with its dev tools.

demo: install  ## Generate the sample dataset and run the whole pipeline on it.
	$(BIN)/python -m starrynight.demo --out $(DEMO_DIR)

test: install postgres  ## Run the whole test suite (PostgreSQL must be reachable).
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: install  ## Run the benchmarks; each prints its figure and a same-run baseline ratio.
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: install  ## ruff check and format check.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

postgres:  ## Make sure the local PostgreSQL cluster answers on 127.0.0.1:5432.
	@scripts/ensure-postgres.sh

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
