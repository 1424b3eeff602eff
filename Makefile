# Two commands do all the set-up on a fresh machine:
#   make demo   -- the noisy-label training demo on its embedded default data (digits, 40% noise)
#   make test   -- the test suite
# Both create .venv (reusing a CUDA torch already on the machine, else torch==2.13.0 CPU), install the
# dependencies and build the native extension in place.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEPS_STAMP := $(VENV)/.deps-installed
EXT_STAMP := $(VENV)/.extension-built
NATIVE_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' 2>/dev/null)

.PHONY: test test-exhaustive demo bench install lint compat clean

$(DEPS_STAMP): Makefile
	$(PYTHON) -m venv --system-site-packages $(VENV)
	# A torch already on the machine (e.g. a CUDA build) is used as is; otherwise the pinned CPU build.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PY) -c "import triton" 2>/dev/null || $(PIP) install -q triton==3.6.0
	$(PIP) install -q setuptools wheel pybind11 ninja numpy pytest pytest-benchmark ruff scikit-learn matplotlib pillow
	# The framework client tests' (setup.py's test extra); they take the torch above as it is (torch 2.11 to 2.15).
	$(PIP) install -q lightning==2.6.6 accelerate==1.16.0
	touch $@

$(EXT_STAMP): $(DEPS_STAMP) setup.py $(NATIVE_SOURCES)
	MAX_JOBS=2 $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(EXT_STAMP)

# Two pytest processes: everything but the Triton interpreter tests, then those alone with
# TRITON_INTERPRET=1 set before triton is imported (tests/conftest.py selects by the variable).
test: install
	$(PY) -m pytest tests -q
	TRITON_INTERPRET=1 $(PY) -m pytest tests -q -m interpreter

# What `make test` leaves out: the rest of each full product of switches whose pairwise-covering subset the
# default run takes (items marked exhaustive, tests/contract_cases.py), in both processes.
test-exhaustive: install
	$(PY) -m pytest tests -q -m exhaustive
	TRITON_INTERPRET=1 $(PY) -m pytest tests -q -m exhaustive

lint: $(DEPS_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: install
	$(PY) -m saner_kernels.train --compare sgd,sam,saner --dataset digits --noise sym --noise-rate 0.4 \
		--model smallcnn --epochs 60 --k 15 --seed 0 --out runs/demo

# Before resolving: the C++ build (and the CUDA op where nvcc is) plus both test processes against the
# oldest supported torch (2.11) and the newest on the index (which also brings the newest Triton for the
# ahead-of-time PTX checks). Each in its own venv, .venv-torch-X.Y.Z (.ci/torch_compat.sh). Both run the
# default tests and the exhaustive ones (the full switch products, tests/conftest.py).
COMPAT_CUDA ?= $(if $(wildcard $(or $(CUDA_HOME),/usr/local/cuda)/bin/nvcc),1,0)
COMPAT_TESTS := tests -m "exhaustive or not exhaustive"
compat:
	SANER_KERNELS_CUDA=$(COMPAT_CUDA) bash .ci/torch_compat.sh 2.11 $(COMPAT_TESTS)
	bash .ci/torch_compat.sh newest $(COMPAT_TESTS)

bench: install
	$(PY) -m benchmarks.run --device cpu --out bench-results

clean:
	rm -rf $(VENV) build *.egg-info saner_kernels/*.so
