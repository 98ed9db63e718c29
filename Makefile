# fcos-d2: the two commands of the README.
#   make demo  -- set up .venv, train the quickstart model on the built-in data,
#                 evaluate it and draw its detections
#   make test  -- set up .venv, run ruff and the test suite
PY := .venv/bin/python

.PHONY: setup demo test lint benchmark

setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/quickstart.py

lint: setup
	.venv/bin/ruff check .

test: setup
	.venv/bin/ruff check .
	$(PY) -m pytest -q tests

benchmark: setup
	$(PY) tools/benchmark.py
