# syntax=docker/dockerfile:1
# ProReason service images. Build from the repository root:
#   docker build -t proreason .                       # slim CPU image (default target: service)
#   docker build --target gpu -t proreason:gpu .      # in-process vLLM on a GPU box (large)
# docker/README.md explains deployment with docker compose.
#
# The slim image holds no torch and no GPU libraries: the service talks to vLLM (or any
# OpenAI-compatible server) over HTTP. Configuration: a profile (PROREASON_PROFILE: a name in
# /app/configs or a mounted file such as /config/profile.yaml) overridden by
# PROREASON_<SECTION>__<FIELD> environment variables.

ARG VLLM_TAG=v0.31.0

# ---------------------------------------------------------------------------------------------
# build: a virtualenv with the dependencies (cached layer), then the project itself
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when
# pyproject.toml changes, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Exactly the packages pyproject.toml lists (tests/deploy checks the two lists agree).
COPY README.md ./
COPY app/ app/
COPY agents/ agents/
COPY models/ models/
COPY evals/ evals/
COPY bench/ bench/
COPY configs/ configs/
RUN pip install --no-deps .

# ---------------------------------------------------------------------------------------------
# gpu: in-process vLLM (backend: vllm, profile vllm-inprocess) on vLLM's own CUDA image.
# Only built on request (--target gpu, or the compose profile "inprocess"). Binds 0.0.0.0: needs
# PROREASON_SERVER__API_KEYS (or PROREASON_SERVER__ALLOW_UNAUTHENTICATED=true), as the service stage.
FROM vllm/vllm-openai:${VLLM_TAG} AS gpu

WORKDIR /app
COPY pyproject.toml README.md /opt/proreason/
COPY app/ /opt/proreason/app/
COPY agents/ /opt/proreason/agents/
COPY models/ /opt/proreason/models/
COPY evals/ /opt/proreason/evals/
COPY bench/ /opt/proreason/bench/
COPY configs/ /opt/proreason/configs/
# vllm is already installed in the base image and satisfies the [vllm] extra: nothing is upgraded.
RUN uv pip install --system --no-cache "/opt/proreason[vllm]"
COPY configs/ /app/configs/

ENV PROREASON_CONFIGS_DIR=/app/configs \
    PROREASON_PROFILE=vllm-inprocess \
    PROREASON_SERVER__HOST=0.0.0.0 \
    PROREASON_SERVER__PORT=8080 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PROREASON_SERVER__PORT', '8080'), timeout=4)"]
# The base image's entry point is `vllm serve`; replace it.
ENTRYPOINT ["proreason", "serve"]
CMD []

# ---------------------------------------------------------------------------------------------
# service (default): slim runtime, non-root
FROM python:3.11-slim-bookworm AS service

RUN groupadd --system --gid 10001 proreason \
    && useradd --system --uid 10001 --gid proreason --create-home --home-dir /home/proreason proreason

COPY --from=build /opt/venv /opt/venv
# Named profiles and prompt templates; the service finds ./configs from WORKDIR /app.
COPY configs/ /app/configs/
WORKDIR /app

# PROREASON_PROFILE=vllm: two OpenAI-compatible upstreams (set their URLs and model names with
# PROREASON_MODELS__VISION__BASE_URL, ..._MODEL, PROREASON_MODELS__TEXT__...). To use your own
# profile file, mount it and point at it: -v ./my.yaml:/config/profile.yaml:ro
# -e PROREASON_PROFILE=/config/profile.yaml
# It binds 0.0.0.0, so it refuses to start without API keys: -e PROREASON_SERVER__API_KEYS=k1,k2
# (or, behind an authenticating proxy, -e PROREASON_SERVER__ALLOW_UNAUTHENTICATED=true).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROREASON_CONFIGS_DIR=/app/configs \
    PROREASON_PROFILE=vllm \
    PROREASON_SERVER__HOST=0.0.0.0 \
    PROREASON_SERVER__PORT=8080

USER 10001:10001
EXPOSE 8080
# Liveness on /health; slim images have no curl, so python does the probe. The port comes from
# the same variable the service reads, so the probe follows a changed port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PROREASON_SERVER__PORT', '8080'), timeout=4)"]

ENTRYPOINT ["proreason", "serve"]
