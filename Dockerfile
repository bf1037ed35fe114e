# Sluice sidecar image. Build: docker build -t sluice .
# Run:   docker run --read-only -v $PWD/config:/etc/sluice:ro -p 8080:8080 sluice
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sluice
COPY config/sluice.yaml /etc/sluice/sluice.yaml
USER 10001:10001
EXPOSE 8080 9901
# Liveness of Sluice itself (never the backend's): the admin listener answers.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=1).status == 200 else 1)"]
# Exec form: Sluice is PID 1's direct child of nothing, so SIGTERM (drain) and SIGHUP (reload)
# reach it. The config is mounted at this fixed path.
ENTRYPOINT ["sluice", "--config", "/etc/sluice/sluice.yaml"]
