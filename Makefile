# sd-webui-vidguide: one environment per host stack, built from nothing.
#   make test   builds .venv (the A1111 v1.10.1 stack) and runs the tests
#   make demo   runs the flow-guided video demo end to end into out/
#   make bench  prints the benchmark ratios (bench/)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-a1111
export OMP_NUM_THREADS ?= 1
export PYTHONDONTWRITEBYTECODE := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

CHROMIUM := /usr/bin/chromium

.PHONY: env test demo bench clean browser

env: $(STAMP)

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

# The browser tests drive Debian's chromium with Playwright (no browser download: none is reachable).
browser: $(CHROMIUM)

$(CHROMIUM):
	command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq chromium) \
	  || (echo "install Debian's chromium package (the browser tests need /usr/bin/chromium)" && false)

test: $(STAMP) browser
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m lib_vidguide demo --out out

bench: $(STAMP)
	$(PY) bench/guidance_overhead.py

clean:
	rm -rf $(VENV) out .pytest_cache
