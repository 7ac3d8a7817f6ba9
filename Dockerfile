# Image for the dashboard and the demo workflow in docker-compose.yml. The entry point is
# the kaygraph-otel command, so `docker run IMAGE dashboard ...` or `... demo ...`.

# The browser libraries that the dashboard page loads from static/vendor/, fetched by npm
# from dashboard/package-lock.json as `make install` does.
FROM node:22.12.0-bookworm-slim AS assets
WORKDIR /assets
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts && npm run vendor

FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY kaygraph_otel ./kaygraph_otel
COPY exporters ./exporters
# The Python modules and the static files only: dashboard/node_modules stays out.
COPY dashboard/*.py ./dashboard/
COPY dashboard/static ./dashboard/static
COPY --from=assets /assets/static/vendor ./dashboard/static/vendor
RUN pip install '.[dashboard,pocketflow]'

# The user nobody can write only under /tmp, so the demo needs --report-dir /tmp/...
USER nobody
EXPOSE 8080
ENTRYPOINT ["kaygraph-otel"]
CMD ["--help"]
