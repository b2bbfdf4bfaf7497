# Two entry points, each idempotent on a fresh machine:
#   make play   -- the main job: play the shipped CoinRun world in the browser (http://127.0.0.1:8000)
#   make test   -- lint and the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: play demo-data test install lint browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so that no requirement can pull a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

play: $(STAMP)
	$(VENV)/bin/playworld play

# a small CoinRun dataset to train on or to draw start frames from (playworld play --data data/coinrun-demo)
demo-data: $(STAMP)
	$(VENV)/bin/playworld collect procgen --game coinrun --policy mix --episodes 64 --out data/coinrun-demo
	$(VENV)/bin/playworld data info data/coinrun-demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: $(STAMP) browser
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

# Headless Chromium for the browser test of `playworld play` (skipped, with the reason, when absent)
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
	      || echo "could not install chromium: the browser test will be skipped"; \
	  else echo "chromium not installed and not root: the browser test will be skipped"; fi; \
	fi
