# Set-up and entry points. Every target creates .venv when missing and installs what it needs.
# torch is installed first, pinned to the CPU wheel (a bare `torch` requirement pulls a multi-GB CUDA build).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.clipq-installed
TORCH_SPEC ?= torch==2.13.0
PYMINOR := $(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test bench install libpython browser lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[all]"
	touch $(STAMP)

install: $(STAMP) libpython browser

# What the system must provide for the tests. Under CLIPQ_REQUIRE_ALL=1 (set by `make test`) a failed
# install stops the run; otherwise it warns and the tests that need the piece are skipped (tests/_require.py).
missing = if [ "$${CLIPQ_REQUIRE_ALL:-0}" = 1 ]; then \
	  echo "error: could not install $(1), which $(2) need (CLIPQ_REQUIRE_ALL=1: they fail, never skip)" >&2; exit 1; \
	  else echo "warning: could not install $(1); $(2) will be skipped"; fi

# The Python-backend stub of tritonserver embeds the shared libpython of the running version.
libpython:
	@if ! ldconfig -p | grep -q "libpython$(PYMINOR).so.1.0" && [ ! -e "$$($(PYTHON) -c 'import sysconfig,os;print(os.path.join(sysconfig.get_config_var("LIBDIR"),"libpython$(PYMINOR).so.1.0"))')" ]; then \
	  echo "installing libpython$(PYMINOR) from Debian"; \
	  (apt-get update -qq && apt-get install -y -qq libpython$(PYMINOR)) || { $(call missing,libpython$(PYMINOR) (apt-get install libpython$(PYMINOR)),the Triton tests); }; \
	fi

# The page's browser test drives Debian's Chromium through its system chromedriver (no browser download).
browser:
	@if ! command -v chromium >/dev/null 2>&1 || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing chromium and chromium-driver from Debian"; \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) || { $(call missing,chromium/chromium-driver (apt-get install chromium chromium-driver),the browser tests); }; \
	fi

demo: install
	$(VENV)/bin/clipq demo --out $(DEMO_OUT)

# CLIPQ_REQUIRE_ALL=1 (here and in the install steps it runs): whatever `install` provides must be there,
# so a missing package, libpython or browser fails the run instead of skipping tests (docs/testing.md).
test: export CLIPQ_REQUIRE_ALL ?= 1
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks need trained artifacts for the serving target: run `make demo` first.
bench: install perf-analyzer
	$(VENV)/bin/clipq bench --target models --out bench_results
	$(VENV)/bin/clipq bench --target index --out bench_results
	$(VENV)/bin/clipq bench --target triton --artifacts $(DEMO_OUT)/artifacts --perf-analyzer --out bench_results

include mk/perf.mk

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs bench_results .pytest_cache
