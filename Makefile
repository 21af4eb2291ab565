# Quickstart: `make demo` and `make test` work on a fresh machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned in the same pip command as everything else, so pip never pulls a CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
export MPLBACKEND ?= Agg

.PHONY: install test demo bench gpu-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[dev]"
	@test -d /usr/share/datasets/fashion-mnist || ! command -v apt-get >/dev/null 2>&1 || (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || sudo -n apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || echo "note: optional dataset-fashion-mnist not installed (the *-fashion problems need it)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q tests

demo: $(STAMP)
	$(BIN)/rodflow demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# the demo on CUDA in float64/float32 against the CPU float64 run (says so and exits 0 without CUDA)
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache
