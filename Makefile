# Two entry points for a fresh machine with Python 3.11 (see README.md):
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test lint setup clean

# torch==2.13.0 is installed first so that the `torch>=2.2` range in
# pyproject.toml never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# one resolver run for everything: installing flwr in a second step can leave
	# a grpcio-health-checking that needs protobuf 6 next to our protobuf 5
	$(BIN)/python -m pip install --quiet -e '.[dev,train,docs,flower,flower-simulation]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/securefl simulate

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python scripts/test_lanes.py -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
