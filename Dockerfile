# syntax=docker/dockerfile:1
# One image runs every autostep process: the gateway (REST and RPC), the relay, the scheduler,
# function runners, `autostep fire` and the migrations (`autostep db upgrade`).
#   docker build -t autostep .
# Your own functions: FROM autostep, then install your package (see README.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# The locked dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements/runtime.txt requirements/runtime.txt
COPY scripts/install-python scripts/install-python
RUN scripts/install-python /opt/autostep --deps-only
COPY . .
RUN scripts/install-python /opt/autostep

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="autostep" \
      org.opencontainers.image.description="Workflow automation for Kubernetes: typed Python steps as nameko services"
# A fixed, unprivileged user (the chart runs every pod as 10001 with a read-only root
# filesystem; /tmp is an emptyDir there).
RUN groupadd --gid 10001 autostep \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin autostep
COPY --from=build /opt/autostep /opt/autostep
ENV PATH=/opt/autostep/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUTOSTEP_HEALTH_DIR=/tmp/autostep-health
WORKDIR /tmp
USER 10001:10001
CMD ["autostep", "--help"]
