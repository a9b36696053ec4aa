# Triton's perf_analyzer in its own tool venv (included from the Makefile; `make perf-analyzer`).
#
# The current `perf-analyzer` wheels need glibc 2.38, which Debian 12 lacks. The binary inside the
# tritonclient 2.41.0 wheel (its data/bin/perf_analyzer, installed as $(PERF_VENV)/bin/perf_analyzer)
# runs here with Debian's libb64-0d and libcudart.so.12 from PyPI's nvidia-cuda-runtime-cu12 on
# LD_LIBRARY_PATH. It lives in a separate venv so that it never downgrades the project's tritonclient;
# `clipq bench --target triton --perf-analyzer` finds it there and sets LD_LIBRARY_PATH itself.
PERF_VENV ?= .venv-perf
PERF_PY := $(PERF_VENV)/bin/python
PERF_BIN := $(PERF_VENV)/bin/perf_analyzer
PERF_TRITONCLIENT ?= tritonclient==2.41.0
PERF_CUDART ?= nvidia-cuda-runtime-cu12>=12,<13

.PHONY: perf-analyzer libb64

$(PERF_BIN):
	$(PYTHON) -m venv $(PERF_VENV)
	$(PERF_PY) -m pip install -q --upgrade pip
	# --no-deps: only the binary is wanted, not the 2.41 Python client's pinned dependencies
	$(PERF_PY) -m pip install -q --no-deps "$(PERF_TRITONCLIENT)" "$(PERF_CUDART)"
	@test -x $(PERF_BIN) || { echo "error: $(PERF_TRITONCLIENT) did not install $(PERF_BIN)"; exit 1; }

# perf_analyzer links libb64.so.0d (Debian's libb64-0d)
libb64:
	@if ! ldconfig -p | grep -q "libb64.so.0d"; then \
	  echo "installing libb64-0d from Debian"; \
	  (apt-get update -qq && apt-get install -y -qq libb64-0d) || echo "warning: could not install libb64-0d; perf_analyzer will not run"; \
	fi

perf-analyzer: $(PERF_BIN) libb64
	@cudart="$$(ls -d $(PERF_VENV)/lib/python*/site-packages/nvidia/cuda_runtime/lib | head -1)"; \
	if LD_LIBRARY_PATH="$$cudart:$$LD_LIBRARY_PATH" ldd $(PERF_BIN) | grep "not found"; then \
	  echo "warning: $(PERF_BIN) lacks the libraries above; clipq bench --perf-analyzer will skip it"; \
	else echo "perf_analyzer ready: $(PERF_BIN) (LD_LIBRARY_PATH needs $$cudart)"; fi
