# Two commands for a fresh clone: `make run` (demo search) and `make test`.
# Each (re)builds .venv when it is missing or pyproject.toml is newer.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DEMO_WEIGHTS := .cache/demo-weights

.PHONY: run test bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo's ImageNet and FLAIR stand-ins: pretrained once (about a minute), then cached.
$(DEMO_WEIGHTS)/demo-weights.json: $(STAMP)
	$(BIN)/fundus-search demo-weights $(DEMO_WEIGHTS)

run: $(STAMP) $(DEMO_WEIGHTS)/demo-weights.json
	$(BIN)/fundus-search run search/configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean-venv:
	rm -rf $(VENV)
