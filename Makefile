# One way to set up, run the demo, test and benchmark: the README and .ci/run use these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; installed before the project so no requirement pulls a CUDA build.
TORCH := torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/python -m pipelines.demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check anomaly_vae pipelines tests benchmarks
	$(BIN)/ruff format --check anomaly_vae pipelines tests benchmarks

clean:
	rm -rf $(VENV) demo_output
