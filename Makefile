# aeexp: `make demo` (set up and run one experiment) and `make test` (set up and run the test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# The torchvision release made for that torch. Unpinned, pip takes the newest torchvision, which requires a newer
# torch, and replaces the CPU torch with a CUDA build (several GB).
TORCHVISION_VERSION := 0.28.0
STAMP := $(VENV)/.installed
CONSTRAINTS := $(VENV)/constraints.txt
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# The installed torch's version from its metadata: importing torch before numpy is installed warns "Failed to
# initialize NumPy" (torch's own import of numpy), which would look like a broken install.
CHECK_TORCH := $(BIN)/python -c "from importlib.metadata import version; v = version('torch'); assert v.startswith('$(TORCH_VERSION)'), v"

.PHONY: setup demo test lint bench mutate clean

setup: $(STAMP)

# Torch first and pinned: an unpinned torch would pull several GB of CUDA wheels on a CPU machine.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install "torch==$(TORCH_VERSION)" 2>&1 | grep -v "^WARNING: Location" || true
	$(CHECK_TORCH)
	printf 'torch==$(TORCH_VERSION)\ntorchvision==$(TORCHVISION_VERSION)\n' > $(CONSTRAINTS)
	# hydra-optuna-sweeper (pins optuna<3) is replaced by aeexp's own sweeper: out of a venv made before
	$(PIP) uninstall -y hydra-optuna-sweeper 2>/dev/null | grep -v "^WARNING" || true
	$(PIP) install -c $(CONSTRAINTS) -e ".[dev,ray]" 2>&1 | grep -v -e "^WARNING: Location" -e "BuildBackendWarning" || true
	$(CHECK_TORCH)
	$(BIN)/python -c "import aeexp.cli, hydra, mlflow, sklearn, matplotlib, pytest, hypothesis, optuna, ray"
	$(BIN)/ruff --version >/dev/null
	touch $(STAMP)

demo: setup
	$(BIN)/python -m aeexp
	@echo
	@echo "The run is in MLflow's store ./mlflow.db (experiment 'digits'); its figures are also under outputs/."
	@echo "Open the MLflow UI:  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --app-name aeexp --workers 1 --backend-store-uri sqlite:///mlflow.db"
	@echo "(then the link printed above, or http://127.0.0.1:5000)"

# Tests run in parallel workers, one per core (at most 4): most of their time is single-threaded (imports,
# subprocess runs of the CLI), so two workers on two cores take about half the time of one.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))")

test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=20

lint: setup
	$(BIN)/ruff check src tests $(wildcard scripts)

bench: setup
	$(BIN)/python scripts/bench.py

# Mutation testing (mutmut, not in CI): the modules and tests in pyproject.toml's [tool.mutmut]. Run it on a quiet
# machine; it writes docs/mutation-survivors.txt (every mutant not caught), reviewed in docs/MUTATION.md. It keeps its
# work in mutants/ and goes on where a stopped run left off. One module: make mutate MUTANTS='aeexp.evaluation.metrics.*'
MUTMUT_VERSION := 3.8.1
MUTANTS ?=
# A migrated MLflow store made once, which every test session of the run copies (tests/conftest.py store_template).
MUTMUT_STORE := $(CURDIR)/.mutmut-store
mutate: setup
	$(PIP) install -c $(CONSTRAINTS) "mutmut==$(MUTMUT_VERSION)" 2>&1 | grep -v "^WARNING: Location" || true
	$(CHECK_TORCH)
	rm -rf $(MUTMUT_STORE) && mkdir -p $(MUTMUT_STORE) && $(BIN)/python tests/mlflow_store.py $(MUTMUT_STORE) > /dev/null 2>&1
	AEEXP_TEST_STORE_TEMPLATE=$(MUTMUT_STORE)/template.db OMP_NUM_THREADS=1 \
		$(BIN)/mutmut run --max-children $(TEST_WORKERS) $(if $(MUTANTS),"$(MUTANTS)")
	$(BIN)/mutmut results > docs/mutation-survivors.txt
	@echo "survivors: docs/mutation-survivors.txt; a mutant's diff: $(BIN)/mutmut show <name>"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache mutants .mutmut-store
