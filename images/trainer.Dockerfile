# syntax=docker/dockerfile:1
# The GPU trainer image: the janus binary linked against PyTorch 2.11.0's libtorch (the
# CUDA 13 wheel from PyPI, which brings the CUDA runtime, cuDNN, cuBLAS and NCCL as
# nvidia-* wheels), the way the project builds it everywhere (LIBTORCH_USE_PYTORCH=1).
# The NVIDIA driver comes from the node (NVIDIA container toolkit / GPU operator).
#   docker build -f images/trainer.Dockerfile -t ghcr.io/janus/trainer:0.1.0 .
# The CPU test image that images/build.py `trainer-cpu` assembles here is this image
# minus PyTorch: the end-to-end test mounts the project venv's libtorch instead of
# carrying 4.6 GB (see tests/e2e in operator/tests/e2e.rs).
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
ARG TORCH_VERSION=2.11.0

FROM ${PYTHON_IMAGE} AS torch
ARG TORCH_VERSION
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"

FROM torch AS build
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95
ENV PATH=/root/.cargo/bin:/opt/venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p janus-trainer --bin janus \
    && install -m 0755 target/release/janus /janus

FROM torch
# RDMA for NCCL's InfiniBand / RoCE transport: libibverbs and its hardware providers
# (mlx5, efa, ...) and librdmacm from Debian's rdma-core, and ibv_devinfo to look at the
# devices a pod was given. Without them NCCL falls back to TCP sockets across nodes.
# The same packages as images/build.py's trainer-cpu base (a test compares the lists).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libibverbs1 ibverbs-providers librdmacm1 ibverbs-utils \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /janus /usr/local/bin/janus
# libtorch from the wheel; libtorch_cuda finds NCCL's libnccl.so.2 in the nvidia-nccl
# wheel through its own RPATH, and the trainer opens it by that soname (no symlink).
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/torch/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/tmp
RUN useradd --uid 1000 --home-dir /tmp --no-create-home janus
USER 1000:1000
# The operator runs `janus train --config /etc/janus/config.yaml` in every worker pod.
CMD ["janus", "--help"]
