# Sluice sidecar image. Build: docker build -t sluice .
# Run:   docker run --read-only -v $PWD/config:/etc/sluice:ro -p 8080:8080 sluice
#
# Reproducible: both stages start from the same Python patch release on the same Debian
# release, and every Python package (the runtime dependencies and the build backend) comes from
# requirements.lock, by exact version and checked against its hash. The tag is not pinned to a
# digest: the official image is rebuilt under the same tag for Debian security updates.
FROM python:3.11.17-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.lock ./
# A virtualenv, copied whole into the runtime stage (same base image, so the same paths).
# --no-deps: the lock is the whole set; a package it lacks fails `pip check` below.
RUN python -m venv /opt/sluice \
    && /opt/sluice/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# Built with the locked setuptools and wheel, not whatever an isolated build would fetch.
RUN /opt/sluice/bin/pip install --no-deps --no-build-isolation . \
    && /opt/sluice/bin/pip check

FROM python:3.11.17-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/sluice/bin:$PATH
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sluice
COPY --from=build /opt/sluice /opt/sluice
COPY config/sluice.yaml /etc/sluice/sluice.yaml
USER 10001:10001
# The listeners of the baked-in config that are reachable from outside the container: the
# proxy only. Its admin listener is on 127.0.0.1:9901, inside the container. To reach admin
# from outside, mount a config with `admin.host: 0.0.0.0` and a token, and publish the port
# (`-p 9901:9901`; README, "Container image").
EXPOSE 8080
# Liveness of Sluice itself (never the backend's): the admin listener answers, from inside.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=1).status == 200 else 1)"]
# Exec form: sluice is PID 1 itself, with no shell in between, so SIGTERM (drain) and SIGHUP
# (reload) reach it. The config is mounted at this fixed path.
ENTRYPOINT ["sluice", "--config", "/etc/sluice/sluice.yaml"]
