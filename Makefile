# fcos-d2: the two commands of the README.
#   make demo  -- set up .venv, train the quickstart model on the built-in data,
#                 evaluate it and draw its detections
#   make test  -- set up .venv, run ruff (lint and format check) and the test suite
#   make test-fast -- the unit tests only (tests/unit), a quick loop while developing
PY := .venv/bin/python

.PHONY: setup demo test test-fast lint benchmark

setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/quickstart.py

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q tests

test-fast: lint
	$(PY) -m pytest -q tests/unit

benchmark: setup
	$(PY) tools/benchmark.py
