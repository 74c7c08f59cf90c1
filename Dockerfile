# The fundus-search image: the package and its command, Ray pinned to the KubeRay manifests'
# rayVersion, and the shipped configs under /app/search/configs. `make image` builds it.
#
#   CPU (default):  docker build -t fundus-search:0.1.0 .
#   CUDA:           docker build -t fundus-search:0.1.0-cu128 \
#                       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   No registry reachable: BASE=an image `cluster/image/debian-base.sh` makes from the Debian mirror.
#
# Results, weights and data are volumes (see cluster/README.md); nothing in the image is downloaded
# at run time.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# Must equal `rayVersion` in cluster/kuberay/*.yaml: a head and its workers run one Ray release.
ARG RAY_VERSION=2.60.0
# Where torch and torchvision come from (CPU wheels by default; a CUDA index for the GPU image).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX=https://pypi.org/simple

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONUNBUFFERED=1

# wget: KubeRay's health probes call it; rsync: the cluster launcher's file mounts. pip trusts
# the system's CA bundle (PIP_CERT), so a CA added to the base image is trusted too.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates wget rsync \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install --index-url ${PIP_INDEX} --upgrade pip \
    && useradd --create-home --uid 1000 fundus

# torch first, in its own layer: the largest download, reused when only the code changes.
RUN pip install --index-url ${TORCH_INDEX} --extra-index-url ${PIP_INDEX} "torch>=2.4,<2.15" torchvision

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fundus_search fundus_search
COPY search search
COPY models models
COPY data_io data_io
COPY results results
COPY cluster cluster
RUN pip install --index-url ${PIP_INDEX} ".[export]" "ray[default,tune]==${RAY_VERSION}" \
    && fundus-search --version \
    && chown -R fundus:fundus /app

# uid 1000: give the pods `fsGroup: 1000` so they can write the results volume.
USER 1000
CMD ["fundus-search", "--help"]
