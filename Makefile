# One way to set up, run the demo, test and benchmark: the README and .ci/run use these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PyTorch, installed before the project so no requirement pulls another build. The package
# index of our machines resolves it to the CPU build; on Linux PyPI's wheel is the CUDA build
# (gigabytes): `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU one.
TORCH := torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/python -m pipelines.demo

# The Spark tests need the spark extra (and Java 17+, which the machine provides).
test: setup
	$(BIN)/pip install --quiet -e '.[dev,spark]'
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check anomaly_vae pipelines tests benchmarks
	$(BIN)/ruff format --check anomaly_vae pipelines tests benchmarks

# The peers (PyOD) come with the bench extra; the table lands in benchmarks/results/<date>.md.
bench: setup
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) demo_output
