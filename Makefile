# fifa-jax: `make demo` runs the pipeline end to end on embedded data; `make test`
# runs the whole suite.  Both create the two environments when missing:
#   .venv       fifa_jax (jax, flax, grain, orbax, transformers, torch CPU)
#   .venv-prep  data_prep (mediapipe 0.10.21 needs numpy<2 and protobuf<5)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PREP := .venv-prep
DEMO_DIR ?= demo_out
# 8 host CPU devices, so the sharding tests see a real mesh.
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
PYTEST_ARGS ?=

.PHONY: help env main-env prep-env test test-main test-prep check demo clean

help:
	@echo "make demo   run the main job end to end on the embedded default data"
	@echo "make test   run the whole test suite (what CI runs)"
	@echo "make check  the quick tier for the inner loop: every test not marked slow (under 5 minutes)"
	@echo "make env    create .venv and .venv-prep (done by demo/test when missing);"
	@echo "            ACCEL=cuda12|cuda13|tpu adds jax's accelerator extra (default cpu)"

# The accelerator of .venv's jax: cpu (the default), or jax's own extras for CUDA 12/13
# GPUs and Cloud TPU, installed at the jax version of requirements.txt:
#   make env ACCEL=cuda12      (make -n env ACCEL=tpu shows the commands)
ACCEL ?= cpu
ACCELS := cpu cuda12 cuda13 tpu
ifeq ($(filter $(ACCEL),$(ACCELS)),)
$(error ACCEL=$(ACCEL): expected one of $(ACCELS))
endif
JAX_VERSION = $(shell sed -n 's/^jax==//p' requirements.txt)

# The two environments install side by side (pip is mostly downloads, unpacking and
# byte-compiling on one core each): about 40 s less than one after the other on 2 cores.
env:
	$(MAKE) --no-print-directory -j2 main-env prep-env
main-env: $(VENV)/.installed $(if $(filter-out cpu,$(ACCEL)),$(VENV)/.accel-$(ACCEL))
prep-env: $(PREP)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements.txt
	$(VENV)/bin/python -m pip install -q --no-deps -e .
	@# Caption metrics (pycocoevalcap's tokenizer and METEOR) run on Java.
	command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq default-jre-headless) \
	  || echo "warning: no Java; caption metrics (fifa eval) will fail until a JRE is installed"
	@# The web page's browser test drives a headless Chromium from Debian's packages.
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "warning: no Chromium; tests/test_web.py will fail until it is installed"
	touch $@

# jax[cuda12] / jax[tpu] on top of the CPU install: the same jax, its plugin and libraries.
$(VENV)/.accel-%: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -q "jax[$*]==$(JAX_VERSION)"
	$(VENV)/bin/python -c "import jax; print('jax', jax.__version__, 'devices:', jax.devices())"
	touch $@

$(PREP)/.installed: data_prep/requirements.txt pyproject.toml
	test -x $(PREP)/bin/python || $(PYTHON) -m venv $(PREP)
	$(PREP)/bin/python -m pip install -q --upgrade pip
	$(PREP)/bin/python -m pip install -q -r data_prep/requirements.txt
	$(PREP)/bin/python -m pip install -q --no-deps -e .
	$(PREP)/bin/python -m data_prep.samples  # the Tom Hanks sample, from the insightface wheel
	touch $@

test: test-main test-prep

# The main suite needs .venv-prep too: the face finder and the web test run the annotator there.
# Two pytest workers, a test file each at a time (module fixtures and compiled functions stay
# shared within a file; XLA compiles on one core, so two workers nearly halve the time), the
# longest files first (tests/conftest.py's order, kept by --no-loadscope-reorder); then,
# alone, the tests marked serial (processes that meet in collectives with a deadline).
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test-main: env
	$(VENV)/bin/python -m pytest -q tests --ignore=tests/prep -m "not serial" $(XDIST) $(PYTEST_ARGS)
	$(VENV)/bin/python -m pytest -q tests --ignore=tests/prep -m serial $(PYTEST_ARGS)

test-prep: prep-env
	$(PREP)/bin/python -m pytest -q tests/prep $(PYTEST_ARGS)

# The quick tier: parity, invariants and error paths on tiny configs; the slow
# marker keeps out training runs, multi-process runs and the biggest parity checks.
check: env
	$(VENV)/bin/python -m pytest -q tests --ignore=tests/prep -m "not slow" $(XDIST) $(PYTEST_ARGS)
	$(PREP)/bin/python -m pytest -q tests/prep -m "not slow" $(PYTEST_ARGS)

demo: env
	bash scripts/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
