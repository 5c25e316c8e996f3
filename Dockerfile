# syntax=docker/dockerfile:1
# Preloop's image: one image for every process (api, worker, gateway); pick one with the command.
#   docker build -t preloop .
#   docker run -p 8686:8686 -v preloop-data:/data preloop                 # embedded: SQLite + embedded Redis
#   docker run -e PRELOOP_DATABASE_URL=… -e PRELOOP_REDIS_URL=… preloop preloop serve --no-worker
# See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: compilers and headers, builds Preloop's wheel and a wheel for every dependency ---
FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential libffi-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY backend ./backend
COPY policies ./policies
COPY mcp_gateway ./mcp_gateway
COPY workers ./workers
COPY pwa ./pwa
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- final: slim Python, the installed wheels only (the approver app is package data), non-root ---
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PRELOOP_HOST=0.0.0.0 \
    PRELOOP_PORT=8686 \
    PRELOOP_DATA_DIR=/data \
    PRELOOP_LOG_FORMAT=json
RUN groupadd --system --gid 10001 preloop \
 && useradd --system --uid 10001 --gid preloop --home-dir /data --no-create-home --shell /usr/sbin/nologin preloop \
 && mkdir -p /data && chown preloop:preloop /data
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels preloop
USER preloop:preloop
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8686 8787
# No ENTRYPOINT: Fly process commands and `docker run IMAGE preloop worker` name the whole command.
CMD ["preloop", "serve"]
