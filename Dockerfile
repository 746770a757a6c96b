# IoU Maps: the tile service and the `iou-maps` CLI in one image.
#
#   docker build -t iou-maps .
#   docker run --rm -p 8000:8000 -v iou-data:/data iou-maps           # viewer on :8000
#   docker run --rm -v iou-data:/data iou-maps iou-maps storms        # any CLI command
#
#   docker build --build-arg TENSORFLOW=gpu -t iou-maps:gpu .         # NVIDIA GPUs:
#   docker run --rm --gpus all -p 8000:8000 -v iou-data:/data iou-maps:gpu
#
# compose.yaml runs it next to a Redis cache. Built for linux/amd64 (TensorFlow wheels).
# Checked by tests/test_container.py (hadolint, and that every command, option, port, path
# and setting named here exists in the package).

# ---------------------------------------------------------------------------------------------
# builder: a virtual environment with the project and its dependencies, all from wheels
# (every dependency ships manylinux wheels, so no compiler is needed).
# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS builder

# Which TensorFlow (an extra of pyproject.toml): cpu (tensorflow-cpu) or gpu
# (tensorflow[and-cuda]: TensorFlow with its CUDA kernels and NVIDIA's CUDA libraries).
ARG TENSORFLOW=cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first, in a layer of their own that is rebuilt only when pyproject.toml changes:
# install the project with empty packages, then drop it and keep its dependencies.
COPY pyproject.toml README.md ./
RUN mkdir -p iou_maps service \
    && touch iou_maps/__init__.py service/__init__.py \
    && pip install --no-cache-dir "./[${TENSORFLOW}]" \
    && pip uninstall --yes iou-maps \
    && rm -rf build ./*.egg-info

# The project as a wheel: the library, the CLI and the web app with its package data
# (service/static: the viewer and the vendored Leaflet; service/templates), then installed.
COPY iou_maps ./iou_maps
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip install --no-cache-dir --no-deps /wheels/iou_maps-*.whl \
    && iou-maps --help > /dev/null

# ---------------------------------------------------------------------------------------------
# runtime: python:3.11-slim plus the virtual environment. The wheels bundle GDAL, PROJ, GEOS,
# Arrow and the embedded redis-server; the system libraries they still need (glibc, libstdc++,
# zlib, expat, CA certificates) are already in the base image. tini is PID 1: it forwards
# signals to uvicorn and reaps the processes that TensorFlow or an embedded Redis leave.
# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 iou \
    && useradd --system --uid 10001 --gid iou --create-home --home-dir /home/iou iou \
    && mkdir -p /data \
    && chown iou:iou /data

COPY --from=builder /opt/venv /opt/venv

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib \
    IOU_MAPS_DATA_DIR=/data \
    IOU_MAPS_HOST=0.0.0.0 \
    IOU_MAPS_PORT=8000

# GDAL tuned for serving tiles from COGs (local or over HTTP): a block cache, no directory
# listings on open, merged range requests, a VSI read cache, only .tif fetched remotely.
ENV GDAL_CACHEMAX=512 \
    GDAL_NUM_THREADS=ALL_CPUS \
    GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR \
    GDAL_HTTP_MERGE_CONSECUTIVE_RANGES=YES \
    GDAL_HTTP_MULTIPLEX=YES \
    GDAL_HTTP_VERSION=2 \
    GDAL_INGESTED_BYTES_AT_OPEN=32768 \
    CPL_VSIL_CURL_ALLOWED_EXTENSIONS=.tif,.tiff,.TIF,.TIFF \
    VSI_CACHE=TRUE \
    VSI_CACHE_SIZE=50000000 \
    CURL_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PROJ_NETWORK=OFF

# Storms, models (and the embedded Redis when REDIS_URL is unset) live on this volume;
# relative output paths of CLI commands land there too.
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

EXPOSE 8000

# /healthz answers 200 while the app runs (its body says "degraded" when Redis is down).
# The first start loads TensorFlow and the model: give it time.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["iou-maps", "serve", "--host", "0.0.0.0", "--port", "8000"]
