# The two commands a new user runs: `make demo` and `make test`.
# Every target bootstraps its own virtual environment in .venv.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
# The suite runs on every core (at most 4 workers: its end-to-end tests start
# processes of their own); PYTEST_ARGS="-n 0" runs it in one process.
PYTEST_ARGS ?= -n auto --maxprocesses=4

.PHONY: install demo test bench ui serve lint format postgres slurm cellprofiler chromium wrk clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: python3.11 (or python3 >= 3.11) not found on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)  ## Create .venv and install the project with its dev tools.

# The demo's instance is also registered in Conductor's database (.conductor, the default
# data dir of `conductor serve`) as project "demo", so `make serve` shows its results.
demo: install  ## Generate the sample screen and run the whole asset graph on it through Dagster.
	rm -rf $(DEMO_DIR)
	$(BIN)/starrynight sample generate -o $(DEMO_DIR)/data --phenotypes default
	@# One plate of two wells has too few guide profiles per gene for --unit guide: compare cells.
	@echo '{"results": {"unit": "cell"}}' > $(DEMO_DIR)/project.json
	STARRYNIGHT_PROJECT_FILE=$(DEMO_DIR)/project.json \
	  $(BIN)/python -m dagster_defs.driver -d $(DEMO_DIR)/data/sample -w $(DEMO_DIR)/workspace \
	  --dagster-home $(DEMO_DIR)/dagster_home
	@$(BIN)/conductor db upgrade >/dev/null
	@$(BIN)/conductor project add demo --replace -d $(DEMO_DIR)/data/sample \
	  -w $(DEMO_DIR)/workspace --dagster-home $(DEMO_DIR)/dagster_home --gates none
	@echo "Canvas: 'make serve', then http://127.0.0.1:8000/ (project demo)"

ui: install  ## Dagster UI on http://127.0.0.1:3000 over the demo's instance (run `make demo` first).
	@test -d $(DEMO_DIR)/dagster_home || { echo "error: run 'make demo' first" >&2; exit 1; }
	DAGSTER_HOME=$(CURDIR)/$(DEMO_DIR)/dagster_home \
	  STARRYNIGHT_DATASET_URI=$(CURDIR)/$(DEMO_DIR)/data/sample \
	  STARRYNIGHT_WORKSPACE_URI=$(CURDIR)/$(DEMO_DIR)/workspace \
	  $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Without CONDUCTOR_TOKENS(_FILE), a token is made once in .conductor/tokens and printed.
serve: install  ## Conductor REST API + Canvas on http://127.0.0.1:8000 (SQLite in .conductor).
	@$(BIN)/conductor db upgrade
	@if [ -z "$$CONDUCTOR_TOKENS$$CONDUCTOR_TOKENS_FILE" ]; then \
	  test -s .conductor/tokens || (umask 077; $(BIN)/conductor token new admin > .conductor/tokens); \
	  export CONDUCTOR_TOKENS_FILE=$(CURDIR)/.conductor/tokens; \
	  echo "Canvas: http://127.0.0.1:8000/ - sign in with $$(cut -d: -f2 .conductor/tokens)"; \
	fi; exec $(BIN)/conductor serve --host 127.0.0.1 --port 8000

test: install postgres slurm cellprofiler chromium  ## Run the whole test suite (PostgreSQL and Slurm must be reachable).
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: install wrk  ## Run the benchmarks; each prints its figure and a same-run baseline ratio.
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: install  ## ruff check and format check; mypy on pipecraft and starrynight/algorithms.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pipecraft
	$(BIN)/mypy starrynight/algorithms

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

postgres:  ## Make sure the local PostgreSQL cluster answers on 127.0.0.1:5432.
	@scripts/ensure-postgres.sh

# A single-node Slurm cluster (slurm-wlm + munge; installed when missing and root) for the
# Slurm backend's tests; quick when it is already up. Without one (not root, no Slurm) the
# Slurm tests are skipped, except under CI=true, where this target and they fail.
slurm:  ## Make sure a single-node Slurm cluster runs on this machine.
	@scripts/ensure-slurm.sh || { if [ -n "$$CI" ]; then exit 1; fi; \
	  echo "warning: no Slurm cluster; the Slurm tests will be skipped" >&2; }

# CellProfiler 4.2.8 needs Python 3.9 and Java, so it gets its own venv; `starrynight cp run`
# and the CellProfiler comparison test use it. Not installable here is a warning, not a stop
# (the comparison test then fails under CI=true and is skipped otherwise).
cellprofiler:  ## Install CellProfiler 4.2.8 (headless) into .cp-venv.
	@scripts/install_cellprofiler.sh $(CURDIR)/.cp-venv > .cp-venv.log 2>&1 \
	  && echo "CellProfiler: $(CURDIR)/.cp-venv/bin/cellprofiler" \
	  || echo "warning: CellProfiler could not be installed (see .cp-venv.log)" >&2

# Headless Chromium for the Canvas browser test (Debian packages; Playwright drives it
# through /usr/bin/chromium and never downloads a browser of its own).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "warning: chromium missing; run: sudo apt-get install chromium chromium-driver" >&2; fi; }

# wrk drives the Conductor load benchmark from a second process without taking a core.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; \
	  else echo "warning: wrk missing (sudo apt-get install wrk); the Conductor bench falls back to httpx" >&2; fi; }

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
