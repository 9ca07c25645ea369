# syntax=docker/dockerfile:1
# podwire node agent image.
#
#   docker build -t podwire/podwire:0.1.0 .
#
# Two stages: the build stage installs podwire and its Python dependencies into a
# virtualenv; the runtime stage adds only libpcap (scapy compiles the capture filter
# with it) and copies the virtualenv. No compiler, no pip cache, no apt lists.
#
# Built for real by scripts/build-image.sh (Debian's podman, the debootstrap stand-in base):
# 601 MB, of which the stand-in base is 273 MB (Debian minbase + python3; python:3.11-slim is
# about 130 MB) and the virtualenv most of the rest (kubernetes client 126 MB, scapy 24 MB, grpc
# 19 MB, cryptography 16 MB).
#
# User: the image runs as the fixed non-root UID 10001 by default, which is all that
# `podwire replay` and `podwire --help` need. Live capture (`podwire run`) opens
# AF_PACKET sockets, which needs CAP_NET_RAW in the *effective* set; Kubernetes grants
# added capabilities to UID 0 only (a non-root process would need file capabilities on
# the interpreter, and allowPrivilegeEscalation=false/no_new_privs makes the kernel
# ignore those). So the Helm chart runs the agent as UID 0 with every capability
# dropped except NET_RAW (plus SYS_ADMIN for socket stats, NET_ADMIN for Service backends,
# SYS_PTRACE only with socket stats through host PIDs), no privilege
# escalation and a read-only root filesystem; see helm/podwire/values.yaml.

# The base image, pinned by digest (python:3.11-slim-bookworm). This digest is the one independent
# public projects pin for that tag; the machine this was written on cannot reach the registry, so it
# was not pulled here. Update it at release with `docker buildx imagetools inspect
# python:3.11-slim-bookworm` (or Renovate). scripts/build-image.sh and the image test pass instead
# `--build-arg PYTHON_IMAGE=localhost/podwire-base:bookworm`: a Debian bookworm root filesystem from
# debootstrap with Debian's python3 3.11, the stand-in that builds offline.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/podwire
WORKDIR /src
# Only what the package build reads (.dockerignore keeps the rest of the tree out).
# requirements-image.txt: every dependency at an exact version with its hashes (pip-compile
# --generate-hashes from pyproject.toml); pip refuses anything else. podwire itself comes from
# the build context, without dependencies.
# requirements-build.txt: setuptools and wheel, hashed too, to build podwire itself.
COPY requirements-image.txt requirements-build.txt pyproject.toml README.md ./
COPY src ./src
RUN /opt/podwire/bin/pip install --no-compile --require-hashes -r requirements-image.txt -r requirements-build.txt \
    && /opt/podwire/bin/pip install --no-compile --no-deps --no-build-isolation . \
    && /opt/podwire/bin/python -m compileall -q /opt/podwire/lib \
    && /opt/podwire/bin/python -m pip uninstall -y -q pip setuptools wheel packaging

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="podwire" \
      org.opencontainers.image.description="Node agent: every pod TCP connection as workload-labelled OpenTelemetry metrics and spans" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# libpcap0.8: scapy's compile_filter (the kernel BPF program that keeps only SYN/FIN/RST).
# Not pinned to a Debian revision: bookworm's archive keeps only the latest (security) one, so an
# exact pin breaks the build when the archive moves on; the base digest fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpcap0.8 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 podwire \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin podwire
COPY --from=build /opt/podwire /opt/podwire
ENV PATH=/opt/podwire/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# /metrics, /healthz, /readyz (the chart's probes), node-graph API.
EXPOSE 9477
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz over HTTP instead.
ENTRYPOINT ["podwire"]
CMD ["run"]
