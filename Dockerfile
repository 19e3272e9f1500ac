# syntax=docker/dockerfile:1
# dinolab: one image runs the Dask scheduler, the Dask workers, `curate run` and the trainer.
#   docker build --target cpu  -t dinolab:cpu  .
#   docker build --target cuda -t dinolab:cuda .
# The install steps are checked against pyproject.toml (same torch and torchvision pins, same extras) and the
# file is linted with hadolint, both by tests/test_dockerfile.py. See docs/cluster.md.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# -- the project's source: only what the package holds (no tests, data or runs)
FROM python AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dinolab/ dinolab/
COPY core/ core/
COPY schemas/ schemas/
COPY curate/ curate/
COPY pipelines/ pipelines/
COPY pretrain/ pretrain/
COPY features/ features/

# -- CPU build: torch first (TORCH_INDEX_URL may name PyTorch's CPU-only wheel index for a smaller image)
FROM python AS build-cpu
ARG TORCH_INDEX_URL=""
RUN python -m venv /opt/venv \
    && if [ -n "$TORCH_INDEX_URL" ]; then export PIP_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1"
COPY --from=source /src /src
RUN pip install --no-cache-dir "/src[cloud,cluster]"

# -- CUDA build: PyPI's CUDA wheels of torch (they bring their CUDA libraries), faiss-gpu instead of faiss-cpu
FROM python AS build-cuda
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1"
COPY --from=source /src /src
RUN pip install --no-cache-dir "/src[cloud,cluster]" \
    && pip uninstall --yes faiss-cpu \
    && pip install --no-cache-dir "faiss-gpu-cu12==1.14.1.post1"

# -- runtime images: the virtual environment alone, a non-root user, `curate` as the entry point
FROM python AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
RUN useradd --create-home --uid 1000 dinolab
USER 1000
WORKDIR /home/dinolab
EXPOSE 8786 8787
ENTRYPOINT ["curate"]
CMD ["--help"]

FROM python AS cuda
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build-cuda /opt/venv /opt/venv
RUN useradd --create-home --uid 1000 dinolab
USER 1000
WORKDIR /home/dinolab
EXPOSE 8786 8787
ENTRYPOINT ["curate"]
CMD ["--help"]
