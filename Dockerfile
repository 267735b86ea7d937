# The package in a container, built by its own `make setup` (see README.md, "On a GPU").
#
#   docker build -t mlperf-submission .
#   docker run --rm --gpus all --ipc=host mlperf-submission make gpu-check
#   docker run --rm --gpus all --shm-size=8g -v /data:/data -v $PWD/out:/opt/mlperf-submission/out \
#       mlperf-submission make submit DIVISION=closed BENCH=resnet PRESET=1xH200 SYSTEM=systems/mybox.json DATA=/data/imagenet
#
# --shm-size: the data workers hand batches to the trainer through /dev/shm, and docker's default of 64 MB
# holds no ImageNet batch; `python -m mlperf_submission.bench.memory --shm --bench B --preset P`
# prints what a preset needs (8g for ResNet 1xH200; or give the host's with --ipc=host). The torch wheel that
# `make setup` installs brings its own CUDA libraries: the host needs only the NVIDIA driver and the container
# toolkit (--gpus).
# `make horovod` with NCCL needs nvcc too: build FROM an nvidia/cuda *-devel image of the wheel's CUDA version
# (docker build --build-arg BASE=nvidia/cuda:<version>-cudnn-devel-ubuntu24.04 ...).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
# g++: inductor's and Triton's compiles; python3-venv only where the base has no Python of its own (nvidia/cuda)
RUN apt-get update \
    && apt-get install -y --no-install-recommends make g++ git \
    && (command -v python3 >/dev/null || apt-get install -y --no-install-recommends python3 python3-venv) \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/mlperf-submission
COPY . .
RUN make setup
ENV PATH=/opt/mlperf-submission/.venv/bin:$PATH
CMD ["make", "help"]
