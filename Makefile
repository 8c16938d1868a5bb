# `make test` and `make bench` create .venv on first use; nothing is installed by hand.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test bench reference clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	$(BIN)/noharm bench

# The published reference results (docs/reference-results/): bench/suites/reference.yaml into results/reference
# (resumable: rerun to finish), then its report with per-seed summary.csv, settings and the machine that made it.
REFERENCE_OUT ?= docs/reference-results
reference: $(STAMP)
	$(BIN)/noharm run bench/suites/reference.yaml --out results/reference
	$(BIN)/noharm report --experiment reference --tracking-uri sqlite:///results/reference/mlflow.db \
		--out $(REFERENCE_OUT) --stamp
	cp bench/suites/reference.yaml $(REFERENCE_OUT)/suite.yaml

clean:
	rm -rf $(VENV) results runs
