# syntax=docker/dockerfile:1.7
# The kubefusion trainer: every stage process (prepare, sample, score, build) and the DeepSpeed
# training PyTorchJobs. CUDA PyTorch base (devel: DeepSpeed compiles its fused ops with nvcc),
# plus the `train` extra (transformers, trl, peft, accelerate, datasets, DeepSpeed, math-verify).
#   docker build -f images/trainer.Dockerfile -t ghcr.io/kubefusion/kubefusion-trainer:0.1.0 .
# vLLM is not in here: source models are served from the official vllm/vllm-openai image.

# Must equal the torch pin of pyproject's train extra (tests/unit/packaging/test_images_pins.py).
ARG TORCH_VERSION=2.13.0
ARG CUDA_VERSION=12.8
ARG CUDNN_VERSION=9

FROM pytorch/pytorch:${TORCH_VERSION}-cuda${CUDA_VERSION}-cudnn${CUDNN_VERSION}-devel
ARG TORCH_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
LABEL org.opencontainers.image.title="kubefusion-trainer" \
      org.opencontainers.image.source="https://github.com/kubefusion/kubefusion" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /opt/kubefusion/src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
# The train extra's pins come from pyproject.toml; the constraint keeps the base image's CUDA torch
# instead of letting pip swap in a different build.
RUN echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt \
    && pip install --constraint /tmp/constraints.txt ".[train]" \
    && rm /tmp/constraints.txt
# A numeric non-root user; caches and DeepSpeed's JIT-built ops go to writable, mountable paths. The
# operator mounts volumes over them (/tmp, the model cache); without those the directories stay usable by
# any uid whose group is 0, as OpenShift's restricted SCC runs pods (a random uid, gid 0).
RUN mkdir -p /var/cache/kubefusion/huggingface /var/cache/kubefusion/torch_extensions /var/cache/kubefusion/triton \
    && chown -R 65532:0 /var/cache/kubefusion \
    && chmod -R g=u /var/cache/kubefusion
ENV PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/var/cache/kubefusion/huggingface \
    TORCH_EXTENSIONS_DIR=/var/cache/kubefusion/torch_extensions \
    TRITON_CACHE_DIR=/var/cache/kubefusion/triton
USER 65532:0
WORKDIR /tmp
ENTRYPOINT ["kubefusion"]
CMD ["--help"]
