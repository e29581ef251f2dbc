# syntax=docker/dockerfile:1.7
# The project's two images, one target each:
#   docker build --target operator -t sparse-attention-operator/operator .   kopf operator, no torch
#   docker build --target runtime  -t sparse-attention-operator/runtime .    GPU server, sm_90a kernels
# Base images are pinned by tag and digest, once each in the first three stages; refresh a
# pin's tag and digest together (`docker buildx imagetools inspect IMAGE:TAG`). Both final images run as a non-root user, hold
# no compiler, package cache or source tree, and write only to the volumes their Deployments
# mount (operator: /tmp; runtime: /tmp, /scratch, /dev/shm).
# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK: Kubernetes probes both images over HTTP (operator /healthz from the chart, runtime /healthz and /readyz from the operator)
FROM python:3.12-slim-bookworm@sha256:782412e85d0f0984994c290652577d4018aff08145c85b262bb63dc0c7522254 AS python-base
FROM nvidia/cuda:13.0.1-devel-ubuntu24.04@sha256:7d2f6a8c2071d911524f95061a0db363e24d27aa51ec831fcccf9e76eb72bc92 AS cuda-devel
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04@sha256:c3fde347d52d578c84fd644bc177bc7ec333feaf11550d990da4084d7612e4c7 AS cuda-runtime

# ---------------------------------------------------------------------------------------------
# operator: the [operator] extra in a venv on slim Python.
FROM python-base AS operator-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir pip==25.3 \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt ".[operator]" \
    && /opt/venv/bin/pip uninstall --yes pip

FROM python-base AS operator
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sparse-attention-operator" \
      org.opencontainers.image.description="Kubernetes operator for SparseAttentionService resources" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 sas \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sas
COPY --from=operator-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 9090
ENTRYPOINT ["sas-operator"]

# ---------------------------------------------------------------------------------------------
# runtime: the [runtime] extra in a venv, and the block-sparse kernels compiled for sm_90a by
# nvcc from the CUDA devel image. Compiler, CUTLASS headers and ninja stay in this stage.
FROM cuda-devel AS runtime-build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu's python3 packages are pinned by the digest of the base image's release; version pins
# would break with every security update of the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends g++ python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir pip==25.3 \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt ".[runtime]"
RUN python3 -m venv /opt/kernel-build \
    && /opt/kernel-build/bin/pip install --no-cache-dir -c constraints.txt \
        nvidia-cutlass==4.2.0.0 ninja==1.13.2
ARG MAX_JOBS=8
ENV CUDA_HOME=/usr/local/cuda \
    TORCH_CUDA_ARCH_LIST=9.0a
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN cutlass_include="$(/opt/kernel-build/bin/python -c 'import cutlass_library, pathlib; print(pathlib.Path(cutlass_library.__path__[0], "source", "include"))')" \
    && PATH="/opt/kernel-build/bin:${PATH}" SAS_CUTLASS_INCLUDE="${cutlass_include}" MAX_JOBS="${MAX_JOBS}" \
        /opt/venv/bin/python -m sas_runtime.kernels.build --out /opt/kernel-build/out \
    && install -D --mode=0644 /opt/kernel-build/out/sas_kernels.so /opt/sas/kernels/sas_kernels.so \
    && /opt/venv/bin/pip uninstall --yes pip

FROM cuda-runtime AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sparse-attention-runtime" \
      org.opencontainers.image.description="Block-sparse attention inference server for NVIDIA Hopper (sm_90a)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# The same python3 as the build stage (the two CUDA images share one Ubuntu release), so the
# copied venv's interpreter link resolves; pinned by the base image digest as above.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sas \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /scratch \
        --shell /usr/sbin/nologin sas
COPY --from=runtime-build /opt/venv /opt/venv
COPY --from=runtime-build /opt/sas/kernels/sas_kernels.so /opt/sas/kernels/sas_kernels.so
ENV PATH=/opt/venv/bin:${PATH} \
    SAS_KERNEL_LIBRARY=/opt/sas/kernels/sas_kernels.so \
    HOME=/scratch \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /scratch
EXPOSE 8000
ENTRYPOINT ["python", "-m", "sas_runtime"]
CMD ["serve", "--config", "/etc/sas/config.json"]
