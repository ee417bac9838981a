# Two commands: `make recommend` and `make test`. Each sets up .venv with pip first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup recommend test test-fast lint clean

$(BIN)/python:
	$(shell command -v $(PY) >/dev/null 2>&1 && echo $(PY) || echo python3) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt requirements/skypilot-deps.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps skypilot
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements/skypilot-deps.txt
	touch $(STAMP)

setup: $(STAMP)

recommend: $(STAMP)
	$(BIN)/ftplan recommend --model llama2-7b --budget 200

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The quick loop while editing: everything but the tests marked slow (CI runs them all).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy catalog profiler runners planner

clean:
	rm -rf $(VENV) build *.egg-info
