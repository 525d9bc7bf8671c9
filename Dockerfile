# syntax=docker/dockerfile:1
# The bridge as a container.
#
#   docker build -t bridge:0.1.0 .
#   docker run --rm -p 8081:8081 -e BRIDGE_TOKEN=... \
#       -v "$PWD/bridge.yaml:/etc/bridge/bridge.yaml:ro" bridge:0.1.0
#
# The pipeline file is read from /etc/bridge/bridge.yaml (the default argument; pass
# another path to override it). It must listen on 0.0.0.0:8081 to be reachable from
# outside the container. See docs/operations.md.

# ---- build: one wheel for the bridge and every dependency, all extras included
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY configs ./configs
COPY consumer_core ./consumer_core
COPY connectors ./connectors
COPY sinks ./sinks
RUN pip wheel --wheel-dir /wheels ".[all]"

# ---- run: the slim base, the wheels installed, a user with no privileges
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRIDGE_LOG_FORMAT=json \
    BRIDGE_HEALTHCHECK_URL=http://127.0.0.1:8081/healthz
RUN groupadd --system --gid 10001 bridge \
 && useradd --system --uid 10001 --gid bridge --home-dir /var/lib/bridge --create-home \
        --shell /usr/sbin/nologin bridge \
 && mkdir -p /etc/bridge
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "bridge[all]"
# The working directory holds relative paths of the pipeline file (the SQLite store,
# file sinks): writable by the bridge user, and a volume in Kubernetes.
WORKDIR /var/lib/bridge
USER 10001:10001
EXPOSE 8081
# Python's urllib: the slim image has no curl. Any answer other than 2xx fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['BRIDGE_HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["bridge", "run"]
CMD ["/etc/bridge/bridge.yaml"]
