# Two commands on a fresh machine:
#   make demo   creates .venv, installs bggen, runs the whole pipeline on the sample catalog
#   make test   the test suite, on embedded defaults and then on the real services (.ci/run runs it)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test venv benchmarks ui clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bggen-demo

test: $(STAMP)
	bash scripts/run_tests.sh

ui: $(STAMP)
	DAGSTER_HOME=$(CURDIR)/bggen_data/dagster_home $(VENV)/bin/dagster dev -w workspace.yaml

benchmarks: $(STAMP)
	$(VENV)/bin/python benchmarks/bucketing.py
	$(VENV)/bin/python benchmarks/pipeline.py
	$(VENV)/bin/python benchmarks/masking.py
	$(VENV)/bin/python benchmarks/bandit.py
	$(VENV)/bin/python benchmarks/serving.py
	$(VENV)/bin/python benchmarks/diffusion.py

clean:
	rm -rf bggen_data
