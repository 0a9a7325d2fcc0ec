# lightnas: the `nas` CLI (workers, study management), Ray and optuna-dashboard in one CPU image.
#
#   docker build -t lightnas .
#   docker run --rm lightnas spaces
#   docker compose up -d --scale worker=4        # see docker-compose.yml and docs/docker.md
#
# State: $NAS_HOME=/data (device profiles, calibrated host profile) is a volume and the working
# directory, so `nas export --to out/` and a default SQLite `nas.db` land there too. For many
# workers point $NAS_STORAGE (or --storage) at PostgreSQL instead.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NAS_HOME=/data

# CPU-only torch first, from PyTorch's CPU index: the default PyPI wheel pulls several GB of CUDA
# libraries. A `docker build` has the internet, so the index is named here; `make install` pins
# the same version (torch==2.13.0) and leaves the index to pip's configuration.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src

# The dependencies, as a layer of their own that only pyproject.toml invalidates (setuptools'
# package discovery needs the sources, so the project itself is installed after the COPY below).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extra = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extra['ray'] + extra['api'] + extra['dashboard']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
    && rm /tmp/requirements.txt

COPY . .
# hadolint ignore=DL3013
RUN pip install ".[ray,api,dashboard]" \
    && rm -rf /src/build /src/*.egg-info \
    && nas spaces >/dev/null

# An unprivileged user ("nas", uid 10001) owns the state directory; nothing runs as root. The
# numeric USER lets orchestrators check runAsNonRoot without reading /etc/passwd.
RUN groupadd --gid 10001 nas \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin nas \
    && mkdir -p /data \
    && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]

# `docker run IMAGE worker --storage URL`, `docker run IMAGE study list`, ...
ENTRYPOINT ["nas"]
CMD ["--help"]
