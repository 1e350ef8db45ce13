# The two commands of the README: `make demo` and `make test`.  Both set everything up on a fresh
# clone: a virtualenv in .venv with the project and its test extras, and the Apache Kafka jars from
# Maven Central (cached in ~/.cache/lo2-stream/kafka).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo setup kafka-jars lint typecheck bench clean

# native/: the Rust tokenizer of the loader is (re)built by the editable install when it changes.
$(STAMP): pyproject.toml native/Cargo.toml native/Cargo.lock native/src/lib.rs
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP) kafka-jars

kafka-jars: $(STAMP)
	$(BIN)/lo2 kafka fetch --optional

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(BIN)/lo2 demo

lint: $(STAMP)
	$(BIN)/ruff check shared batch worker lo2 bench tests

typecheck: $(STAMP)
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/featurize.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/explain.py
	$(BIN)/python bench/stream.py
	$(BIN)/python bench/broker_start.py
	$(BIN)/python bench/faust_rebalance.py

clean:
	rm -rf $(VENV) .lo2 .pytest_cache .mypy_cache .ruff_cache
