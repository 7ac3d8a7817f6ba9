# Image for the dashboard and the demo workflow in docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kaygraph_otel ./kaygraph_otel
COPY exporters ./exporters
COPY dashboard ./dashboard
RUN pip install --no-cache-dir '.[dashboard,pocketflow]'
USER nobody
ENTRYPOINT ["kaygraph-otel"]
