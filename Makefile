# Development tasks. `make test` installs what is missing, then runs pytest.
# Pass extra arguments with PYTEST_ARGS, DEMO_ARGS or BENCH_ARGS, e.g.
# `make test PYTEST_ARGS="-k redis -x"`.

VENV := .venv
PYTHON := $(VENV)/bin/python
# Written after a successful `pip install`; pip runs again when pyproject.toml is newer.
INSTALL_STAMP := $(VENV)/.install-stamp
# The dashboard's graph layout library, installed by npm and copied into static/vendor/.
VENDOR_ASSET := dashboard/static/vendor/elk.bundled.js

.PHONY: install system-packages test demo bench lint clean

install: system-packages $(INSTALL_STAMP) $(VENDOR_ASSET)

# The script checks for redis-server and chromium and calls apt-get only when one is missing.
system-packages:
	bash scripts/install-system-packages.sh

$(PYTHON):
	python3 -m venv $(VENV)

$(INSTALL_STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install -e '.[dev]'
	touch $(INSTALL_STAMP)

$(VENDOR_ASSET): dashboard/package.json dashboard/package-lock.json
	npm --prefix dashboard ci --no-audit --no-fund
	npm --prefix dashboard run vendor

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/kaygraph-otel demo $(DEMO_ARGS)

bench: install
	@if [ -f benchmarks/__main__.py ]; then \
		$(PYTHON) -m benchmarks $(BENCH_ARGS); \
	else \
		echo "benchmarks/__main__.py not found; no benchmarks to run."; \
	fi

lint: install
	$(VENV)/bin/ruff check .

# Removes build and test outputs; the virtualenv is kept.
clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache test-artifacts reports
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
