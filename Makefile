# Two commands on a fresh clone: `make demo` and `make test`.
# Both create .venv with the pinned dependencies on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test protos serve clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/distillery demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Regenerate the gRPC stubs after editing protos/ (tests fail if they are stale).
protos: $(STAMP)
	$(BIN)/python -m protos.codegen

serve: $(STAMP)
	$(BIN)/distillery serve --data-dir ./distillery-data --port 50051

clean:
	rm -rf $(VENV) demo-output distillery-data
