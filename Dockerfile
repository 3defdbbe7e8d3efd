# FAISSx server image: `docker build -t faissx .` then `docker run -p 45678:45678 faissx`.
# BASE is the official slim Python image; a build without registry access passes another
# Debian-based Python 3.10+ image (see README.md, "Docker").
ARG BASE=python:3.11-slim

# -- build: install the package and its dependencies into a virtual environment ---------------
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY faissx ./faissx
COPY faissx_core ./faissx_core
COPY faissx_plugins ./faissx_plugins
COPY faissx_client ./faissx_client
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# -- runtime: the environment, the entry point, a non-root user -----------------------------
FROM ${BASE}
LABEL org.opencontainers.image.title="faissx" \
      org.opencontainers.image.description="FAISS indices served over ZeroMQ" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 faissx \
    && useradd --system --uid 10001 --gid faissx --home-dir /data --shell /usr/sbin/nologin faissx \
    && mkdir -p /data \
    && chown faissx:faissx /data
COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/faissx-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FAISSX_BIND_ADDRESS=0.0.0.0 \
    FAISSX_PORT=45678
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 45678
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["faissx-entrypoint", "health", "--timeout", "3"]
ENTRYPOINT ["faissx-entrypoint"]
CMD ["serve"]
