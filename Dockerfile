# syntax=docker/dockerfile:1
# CPU image of the bidder worker (onnxruntime CPU).
#   docker build -t REGISTRY/bidder:0.1.0 .
# Runs as uid 10001 and works with a read-only root filesystem: the only writable paths it needs are
# /tmp and BIDDER_DATA_DIR (emptyDirs in the Helm chart).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -c "import bidder.settings, onnxruntime"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 bidder \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin bidder \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/bidder
COPY --from=build /opt/venv /opt/venv
# The committed default models; owned by root and read-only for the worker.
COPY onnx_models/ /opt/bidder/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIDDER_MODEL_DIR=/opt/bidder/models \
    BIDDER_DATA_DIR=/var/lib/bidder \
    BIDDER_PROVIDER=cpu
WORKDIR /var/lib/bidder
USER 10001:10001
# /metrics, /healthz, /readyz (BIDDER_WEB_PORT)
EXPOSE 6066
CMD ["bidder", "worker"]
