# Two commands for a fresh clone:  `make run`  (main pipeline)  and  `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The project to run: a name under projects/ or a path to a project folder (MLOPS_PROJECT=weather make run).
export MLOPS_PROJECT ?= flights
export MLOPS_STATE_DIR ?= $(CURDIR)/.mlops_state/$(notdir $(patsubst %/,%,$(patsubst %/project.yaml,%,$(MLOPS_PROJECT))))
export DAGSTER_HOME ?= $(MLOPS_STATE_DIR)/dagster_home
export MLOPS_DAGSTER_POSTGRES_URL ?= $(subst postgresql://,postgresql+psycopg2://,$(MLOPS_POSTGRES_URL))/mlops_dagster

.PHONY: run test lint ui mlflow serve benchmark

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	$(BIN)/python -m mlops_assets.kernels
	touch $@

run: $(BIN)/.installed
	$(BIN)/mlops-assets run

test: $(BIN)/.installed lint
	$(BIN)/mlops-assets init >/dev/null
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check mlops_assets mlops_assets_tests benchmarks projects notebooks
	$(BIN)/lint-imports

ui: $(BIN)/.installed
	$(BIN)/mlops-assets init
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/feature_repository.py

mlflow: $(BIN)/.installed
	$(BIN)/mlops-assets mlflow-ui --port 5000

serve: $(BIN)/.installed
	$(BIN)/python -m mlops_assets.serving --host 127.0.0.1 --port 8000 --workers 1
