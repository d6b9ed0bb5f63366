# Two commands on a fresh machine:
#   make demo   creates .venv, installs bggen, runs the whole pipeline on the sample catalog
#   make test   the test suite, on embedded defaults and then on the real services (.ci/run runs it)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test venv benchmarks ui clean stack stack-demo stack-down

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bggen-demo

# pytest twice: embedded defaults (SQLite, local store), then the real services (MariaDB, SeaweedFS
# S3, Redis, RabbitMQ; ci_services.sh starts them if needed). Exit 5 (no tests collected) fails.
PYTEST := HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/python -m pytest -p no:cacheprovider -q
NO_TESTS := { rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests" >&2; exit $$rc; }

test: $(STAMP)
	bash scripts/install_chromium.sh
	bash scripts/ci_services.sh
	BGGEN_TEST_BACKEND=embedded $(PYTEST) || $(NO_TESTS)
	BGGEN_TEST_BACKEND=services $(PYTEST) || $(NO_TESTS)

# The demo's instance (bggen_data/dagster_home/dagster.yaml, written if missing): one run at a time,
# and the sensor cursors the demo left there, so the daemon starts no stampede of runs.
DEMO_HOME := $(CURDIR)/bggen_data/dagster_home

ui: $(STAMP)
	DAGSTER_HOME=$(DEMO_HOME) $(VENV)/bin/bggen-demo --instance-only
	DAGSTER_HOME=$(DEMO_HOME) $(VENV)/bin/dagster dev -w workspace.yaml

# The production topology on this machine (bggen_assets/stack.py; docs/production.md): MariaDB, Redis,
# RabbitMQ (used if running, else started by scripts/ci_services.sh), SeaweedFS S3, the gRPC code
# server, Dagster webserver + daemon on deploy/dagster.yaml, Celery workers for the `dagster` and
# `gpu` queues, two bggen-serve replicas. State, pids and logs in $(STACK_DIR); STACK_ARGS passes
# options to `up` (e.g. STACK_ARGS=--free-ports), DEMO_ARGS to `demo` (e.g. DEMO_ARGS="--limit 2").
# stack-demo pushes the sample catalog through it (runs queued via GraphQL, steps on Celery).
STACK_DIR ?= $(CURDIR)/bggen_data/stack
STACK := $(VENV)/bin/python -m bggen_assets.stack
STACK_ARGS ?=
DEMO_ARGS ?=

stack: $(STAMP)
	$(STACK) up --state-dir $(STACK_DIR) $(STACK_ARGS)

stack-demo: $(STAMP)
	$(STACK) demo --state-dir $(STACK_DIR) $(DEMO_ARGS)

# Stops exactly the processes `make stack` started (their pid records); never the system services.
stack-down:
	$(STACK) down --state-dir $(STACK_DIR)

benchmarks: $(STAMP)
	$(VENV)/bin/python benchmarks/bucketing.py
	$(VENV)/bin/python benchmarks/pipeline.py
	$(VENV)/bin/python benchmarks/masking.py
	$(VENV)/bin/python benchmarks/bandit.py
	$(VENV)/bin/python benchmarks/serving.py
	$(VENV)/bin/python benchmarks/diffusion.py

clean:
	rm -rf bggen_data
