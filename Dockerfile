# optim-service: the HTTP API in one process per container.
#
#   docker build -t optim-service .
#   docker run -d -p 127.0.0.1:8000:8000 -v optim-data:/data optim-service
#
# BASE_IMAGE must be a Debian-like image with python3 (>= 3.11) and its venv module; nothing else is
# assumed (no `python`, no pip in the system interpreter, no curl). CI builds on a debootstrapped
# bookworm (.ci/docker-smoke); production uses the official slim image.
ARG BASE_IMAGE=python:3.12-slim-bookworm

# ---- builder: a venv with the dependencies, then the package -------------------------------------
FROM ${BASE_IMAGE} AS builder

# Optional pip settings for networks that need them (a mirror, a proxy's index); empty means pip's
# own defaults, and pip ignores empty PIP_* variables. Nothing here outlives the builder stage.
# HTTP(S)_PROXY / NO_PROXY are Docker's predefined build args and need no ARG.
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_TRUSTED_HOST=""
ARG PIP_DEFAULT_TIMEOUT=""

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that a code change reuses this layer. The image
# always speaks PostgreSQL: the `postgres` extra is added if pyproject has one, and psycopg 3
# (binary) if nothing names psycopg.
COPY pyproject.toml ./
RUN python3 -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
deps = p['dependencies'] + p.get('optional-dependencies', {}).get('postgres', []); \
deps += [] if any(re.match(r'psycopg\b', d) for d in deps) else ['psycopg[binary]>=3.2']; \
print('\n'.join(deps))" > /tmp/requirements.txt \
 && cat /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt

# Then the code, installed without touching the dependencies.
COPY README.md ./
COPY optim_core ./optim_core
COPY service ./service
RUN pip install --no-cache-dir --no-deps . \
 && pip check

# ---- runtime: the venv and a non-root user ------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OPTIM_DATABASE_URL=sqlite:////data/optim.sqlite3

# A fixed uid/gid so that volumes and bind mounts can be prepared for it (chown 10001:10001).
RUN groupadd --gid 10001 optim \
 && useradd --uid 10001 --gid optim --home-dir /data --no-create-home --shell /usr/sbin/nologin optim \
 && mkdir -p /data \
 && chown optim:optim /data

COPY --from=builder /opt/venv /opt/venv

# The SQLite default lives on the volume; it is the working directory too, so that even the
# service's relative default (data/optim.sqlite3) would land on it.
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

EXPOSE 8000

# Liveness with Python's own urllib (slim images have no curl); proxies are bypassed, so that an
# HTTP(S)_PROXY in the container's environment cannot send the probe elsewhere.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["optim-service", "serve", "--host", "0.0.0.0", "--port", "8000"]
