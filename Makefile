# Two commands for a fresh clone: `make run` (demo search) and `make test`.
# Each (re)builds .venv when it is missing or pyproject.toml is newer.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DEMO_WEIGHTS := .cache/demo-weights

.PHONY: run test bench image clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo: the ImageNet and FLAIR stand-ins, then the study: a search, its evaluation (every
# cell's winner on every fold of 2 partitions, and on the held-out test split) and the report, all in
# runs/demo-<timestamp>/.
DEMO := demo-$(shell date +%Y%m%d-%H%M%S)

run: $(STAMP) $(DEMO_WEIGHTS)/demo-weights.json
	$(BIN)/fundus-search study search/configs/demo.yaml --name $(DEMO)

# Pretrained again when the recipe (search/demo/) changes; cached otherwise.
$(DEMO_WEIGHTS)/demo-weights.json: $(STAMP) search/demo/weights.py search/demo/corpora.py
	$(BIN)/fundus-search demo-weights $(DEMO_WEIGHTS)

# The house style first (seconds): `ruff format` to fix what --check reports.
test: $(STAMP)
	$(BIN)/python -m ruff format --check --quiet .
	$(BIN)/python -m ruff check --quiet .
	$(BIN)/python -m pytest tests -q --durations=15

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# The container image (Dockerfile; not part of `make test`). Build arguments pass through, e.g.
# make image DOCKER_BUILD_ARGS="--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128"
IMAGE ?= fundus-search:0.1.0
DOCKER_BUILD_ARGS ?=

image:
	docker build -t $(IMAGE) $(DOCKER_BUILD_ARGS) .

clean-venv:
	rm -rf $(VENV)
