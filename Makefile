# sd-webui-vidguide: one environment per host stack, built from nothing.
#   make test         builds .venv (the A1111 v1.10.1 stack) and .venv-forge (the Forge 2.0.1v1.10.1
#                     stack) and runs the tests in each, the host stand-in playing that host
#   make test-a1111   only the A1111 run; make test-forge only the Forge run
#   make demo   runs the flow-guided video demo end to end into out/
#   make bench  prints the benchmark ratios (bench/)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-a1111
VENV_FORGE  := .venv-forge
PY_FORGE    := $(VENV_FORGE)/bin/python
STAMP_FORGE := $(VENV_FORGE)/.stamp-forge
PYTEST_ARGS ?= -q
export OMP_NUM_THREADS ?= 1
export PYTHONDONTWRITEBYTECODE := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

CHROMIUM := /usr/bin/chromium

.PHONY: env env-forge test test-a1111 test-forge demo bench clean browser

env: $(STAMP)

env-forge: $(STAMP_FORGE)

$(STAMP): requirements/a1111-host.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	# torch first, on its own: 2.13.0 is the local CPU wheel, and nothing after it may replace it.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements/a1111-host.txt
	# k-diffusion's package __init__ needs torchvision, which cannot be installed here; the host
	# stand-in loads only its sampling/external modules, so its dependency list is not wanted.
	$(PY) -m pip install -q --no-deps k-diffusion==0.1.1.post1
	touch $(STAMP)

# The same for Forge's stack (gradio 4, pydantic 2, transformers 4.46, diffusers 0.31).
$(STAMP_FORGE): requirements/forge-host.txt
	$(PYTHON) -m venv $(VENV_FORGE)
	$(PY_FORGE) -m pip install -q --upgrade "pip>=24"
	$(PY_FORGE) -m pip install -q torch==2.13.0
	$(PY_FORGE) -m pip install -q -r requirements/forge-host.txt
	$(PY_FORGE) -m pip install -q --no-deps k-diffusion==0.1.1.post1
	touch $(STAMP_FORGE)

# The browser tests drive Debian's chromium with Playwright (no browser download: none is reachable).
browser: $(CHROMIUM)

$(CHROMIUM):
	command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq chromium) \
	  || (echo "install Debian's chromium package (the browser tests need /usr/bin/chromium)" && false)

# Both runs, even when the first fails; the target fails if either did.
test: $(STAMP) $(STAMP_FORGE) browser
	@status=0; \
	$(MAKE) --no-print-directory test-a1111 || status=1; \
	$(MAKE) --no-print-directory test-forge || status=1; \
	exit $$status

# The stand-in host plays A1111 v1.10.1 (tests/host/README.md).
test-a1111: $(STAMP) browser
	VIDGUIDE_STANDIN_HOST=a1111 $(PY) -m pytest $(PYTEST_ARGS) tests

# The stand-in host plays Forge (VIDGUIDE_STANDIN_HOST=forge), in Forge's stack.
test-forge: $(STAMP_FORGE) browser
	VIDGUIDE_STANDIN_HOST=forge $(PY_FORGE) -m pytest $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(PY) -m lib_vidguide demo --out out

bench: $(STAMP)
	$(PY) bench/guidance_overhead.py

clean:
	rm -rf $(VENV) $(VENV_FORGE) out .pytest_cache
