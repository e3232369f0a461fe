# loadkit: the harness (Locust master or worker) and the emulator, in one image.
# docker-compose.yml builds it once (loadkit:local) for all three; deploy/kubernetes runs it too.
FROM python:3.11-slim
WORKDIR /opt/loadkit
COPY pyproject.toml README.md ./
COPY loadkit ./loadkit
RUN pip install --no-cache-dir '.[harness]'
COPY locustfiles ./locustfiles
COPY workloads ./workloads
COPY docs/emulator-config.yaml ./docs/emulator-config.yaml
# Nothing here needs root; a numeric user lets Kubernetes check runAsNonRoot.
RUN useradd --uid 10001 --create-home loadkit
USER 10001
EXPOSE 8000 8089 5557
CMD ["loadkit", "emulator", "--host", "0.0.0.0", "--port", "8000"]
