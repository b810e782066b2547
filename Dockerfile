# detrigger-guard images. Two targets, neither with torch:
#   gpu (the default, last stage): CUDA runtime + cuDNN base, onnxruntime-gpu
#   cpu:                           Debian bookworm base, onnxruntime
#
#   docker build -t detrigger-guard:gpu .
#   docker build --target cpu -t detrigger-guard:cpu .
#
# Base images are build arguments, so an image can be built from a local base
# (see deploy/podman/build-base.sh and `make docker-smoke`). Behind a
# TLS-intercepting proxy, pass its CA certificate as a build secret; it is used
# by apt and pip during the build and never stored in a layer:
#   docker build --secret id=extra_ca,src=/path/to/proxy-ca.pem ...
# Settings are GUARD_* environment variables (service/settings.py), set at run time.

ARG BASE_IMAGE=debian:bookworm-slim
# CUDA 13 + cuDNN 9: what onnxruntime-gpu on PyPI is built for (1.31: CUDA 13.0); the
# gpu-deps stage checks that the two agree.
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---- CPU: Python from the distribution, then a virtualenv with the runtime deps.
# The CPU stages come first: older buildah builds every stage up to --target.
FROM ${BASE_IMAGE} AS cpu-os
RUN --mount=type=secret,id=extra_ca \
    --mount=type=bind,source=deploy/docker/with-extra-ca.sh,target=/usr/local/bin/with-extra-ca \
    with-extra-ca sh -c 'apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*'

FROM cpu-os AS cpu-deps
ARG ORT_PACKAGE=onnxruntime
# The service's extras in the image: tracing (OpenTelemetry SDK and OTLP exporter, switched on
# by OTEL_* at run time) and s3 (boto3, for GUARD_QUARANTINE_S3_URL). --build-arg IMAGE_EXTRAS=
# leaves them out.
ARG IMAGE_EXTRAS="tracing s3"
COPY pyproject.toml deploy/docker/runtime_requirements.py /src/
RUN --mount=type=secret,id=extra_ca \
    --mount=type=secret,id=pip_conf \
    --mount=type=bind,source=deploy/docker/with-extra-ca.sh,target=/usr/local/bin/with-extra-ca \
    python3 -m venv /opt/venv \
    && python3 /src/runtime_requirements.py /src/pyproject.toml \
         --onnxruntime "$ORT_PACKAGE" --extras "$IMAGE_EXTRAS" >/src/requirements.txt \
    && with-extra-ca /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
         -r /src/requirements.txt

FROM cpu-os AS cpu
COPY --from=cpu-deps /opt/venv /opt/venv
RUN groupadd --gid 10001 guard \
    && useradd --uid 10001 --gid guard --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin guard
WORKDIR /app
COPY contract/ /app/contract/
COPY service/ /app/service/
COPY models/ /app/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    GUARD_MODELS=/app/models/mnist \
    GUARD_GRPC_HOST=0.0.0.0
USER 10001:10001
# REST (uvicorn) and V2 over gRPC (GUARD_GRPC_PORT)
EXPOSE 8000 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# The guard writes its own JSON access log; uvicorn's would repeat it.
CMD ["uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-server-header", "--no-access-log"]

# ---- GPU: the same steps on the CUDA runtime base, with onnxruntime-gpu.
FROM ${CUDA_BASE_IMAGE} AS gpu-os
RUN --mount=type=secret,id=extra_ca \
    --mount=type=bind,source=deploy/docker/with-extra-ca.sh,target=/usr/local/bin/with-extra-ca \
    with-extra-ca sh -c 'apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*'

FROM gpu-os AS gpu-deps
ARG ORT_PACKAGE=onnxruntime-gpu
ARG IMAGE_EXTRAS="tracing s3"
COPY pyproject.toml deploy/docker/runtime_requirements.py deploy/docker/check_ort_cuda.py /src/
RUN --mount=type=secret,id=extra_ca \
    --mount=type=secret,id=pip_conf \
    --mount=type=bind,source=deploy/docker/with-extra-ca.sh,target=/usr/local/bin/with-extra-ca \
    python3 -m venv /opt/venv \
    && python3 /src/runtime_requirements.py /src/pyproject.toml \
         --onnxruntime "$ORT_PACKAGE" --extras "$IMAGE_EXTRAS" >/src/requirements.txt \
    && with-extra-ca /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
         -r /src/requirements.txt \
    && /opt/venv/bin/python /src/check_ort_cuda.py

FROM gpu-os AS gpu
COPY --from=gpu-deps /opt/venv /opt/venv
RUN groupadd --gid 10001 guard \
    && useradd --uid 10001 --gid guard --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin guard
WORKDIR /app
COPY contract/ /app/contract/
COPY service/ /app/service/
COPY models/ /app/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    GUARD_MODELS=/app/models/mnist \
    GUARD_GRPC_HOST=0.0.0.0 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# REST (uvicorn) and V2 over gRPC (GUARD_GRPC_PORT)
EXPOSE 8000 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# The guard writes its own JSON access log; uvicorn's would repeat it.
CMD ["uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-server-header", "--no-access-log"]
