# loadkit: the harness (Locust master or worker) and the emulator, in one image.
FROM python:3.11-slim
WORKDIR /opt/loadkit
COPY pyproject.toml README.md ./
COPY loadkit ./loadkit
RUN pip install --no-cache-dir '.[harness]'
COPY locustfiles ./locustfiles
COPY workloads ./workloads
COPY docs/emulator-config.yaml ./docs/emulator-config.yaml
EXPOSE 8000 8089 5557
CMD ["loadkit", "emulator", "--host", "0.0.0.0", "--port", "8000"]
