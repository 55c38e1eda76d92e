# One image for the code location, the run pods and the webhook receiver (deploy/README.md).
FROM python:3.11-slim
WORKDIR /opt/civicband
COPY pyproject.toml ./
COPY civicband_pipelines ./civicband_pipelines
# dagster-k8s: run pods load the K8sRunLauncher from the instance config; its version goes with dagster-postgres's.
RUN pip install --no-cache-dir . "dagster-k8s==0.29.27"
# uid 10001 has no home directory in this image: coverage_report writes coverage.csv here.
ENV CIVICBAND_HOME=/tmp/civicband
USER 10001
