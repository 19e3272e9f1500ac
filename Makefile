# Two entry points, each creating or refreshing its own environment first:
#   make demo   — the main job: the embedded demo lake → curate run → DINOv2 on the shards
#   make test   — the test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/curate demo

test: setup
	$(PY) -m pytest -n 2 tests  # two test processes: most tests wait on processes they start

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.extract
