# syntax=docker/dockerfile:1.7
# The kubefusion operator: kopf + the Kubernetes client, nothing else (no torch).
#   docker build -f images/operator.Dockerfile -t ghcr.io/kubefusion/kubefusion-operator:0.1.0 .
# The chart runs it as UID 65532 with a read-only root filesystem (restricted Pod Security Standard).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kubefusion
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
# Only the operator extra: its pins come from pyproject.toml (tests/unit/packaging/test_images_pins.py).
RUN /opt/kubefusion/bin/pip install ".[operator]"

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="kubefusion-operator" \
      org.opencontainers.image.source="https://github.com/kubefusion/kubefusion" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kubefusion /opt/kubefusion
ENV PATH=/opt/kubefusion/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# A numeric non-root user, so runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
ENTRYPOINT ["kubefusion"]
CMD ["operator"]
