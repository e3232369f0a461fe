# loadkit: `make demo` runs the main job, `make test` installs everything the tests need and runs them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the tests use (real servers, real browser); installed where apt is available.
DEBIAN_PACKAGES ?= chromium victoria-metrics influxdb

.PHONY: install system-deps test lint demo netns-demo emulator bench clean k8s-sync

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "loadkit needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

system-deps:
	@if [ -z "$(DEBIAN_PACKAGES)" ]; then exit 0; fi; \
	missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "note: cannot install Debian packages ($$missing); tests needing them will fail"; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict loadkit

# Bytecode written once: the tests start ~70 Locust and emulator processes, and with
# PYTHONDONTWRITEBYTECODE set each would compile loadkit again (~0.6 s apiece).
# Two phases: tests marked `timing` measure against ground truth (or load every core), so
# they run alone; the rest, mostly waiting (on Locust runs, outages, cut links), run
# $(TEST_WORKERS) at a time: 3 on a 2-core machine took the parallel phase from 261 s to 197 s.
TEST_WORKERS ?= 3
test: install system-deps lint
	$(BIN)/python -m compileall -q loadkit locustfiles
	@$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not timing"; parallel=$$?; \
	$(BIN)/python -m pytest -q -m timing; alone=$$?; \
	test $$parallel -eq 0 -a $$alone -eq 0

# The main job: a ~60 s headless load test of workloads/default.yaml against the embedded emulator
# (--stop-timeout: streams in flight at the end finish instead of being cancelled).
demo: install
	@mkdir -p reports
	$(BIN)/locust -f locustfiles/messages.py --headless -u 40 -r 10 -t 60s --stop-timeout 30s \
		--workload workloads/default.yaml --only-summary \
		--html reports/demo.html --summary-json reports/demo-summary.json
	@echo "HTML report: reports/demo.html (summary JSON: reports/demo-summary.json)"

# A short distributed run across hosts made of Linux network namespaces (needs root): a master,
# 3 workers, the emulator 20 ms round trip away (a delaying relay: tests/multihost.py) and
# VictoriaMetrics as the InfluxDB server. Outputs in reports/netns-demo/.
netns-demo: install system-deps
	$(BIN)/python -m tests.multihost --folder reports/netns-demo

# The Kubernetes kustomizations hold copies of workloads/ and the Grafana provisioning.
k8s-sync: install
	$(BIN)/python deploy/kubernetes/sync.py

emulator: install
	$(BIN)/loadkit emulator

bench: install
	$(BIN)/python bench/emulator_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
