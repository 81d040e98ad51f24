# The only commands anyone needs: `make run` and `make test`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
export PYTHON

.PHONY: install run cluster worker services test test-faults test-cluster test-unit lint bench stop clean browser fault-table

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

## Start Kafka, Redis and the SMTP sink, then run the worker in the foreground.
run: install
	scripts/services.sh start dev
	$(VENV)/bin/faust -A dawning_streams.app worker -l info

## The same on the cluster profile: three Kafka nodes (KRaft), replicated topics
## (Kafka:ReplicationFactor=3), and a Redis and an SMTP sink of their own.
cluster: install
	scripts/services.sh start cluster
	env $$(scripts/services.sh worker-env cluster) $(VENV)/bin/faust -A dawning_streams.app worker -l info

services: install
	scripts/services.sh start dev

## Start the test services (own ports and data) and run the whole suite,
## the fault scenarios included (they start and stop services of their own),
## in TEST_PROCESSES processes: the tests mostly wait on brokers and timers.
## The cluster's fault scenarios (marked both `faults` and `cluster`: rolling
## restart, hung broker, two brokers down) take minutes each and are left to
## `make test-faults` and `make test-cluster`.
TEST_PROCESSES ?= 2
test: install lint browser
	scripts/services.sh start test
	scripts/services.sh start sasl
	$(VENV)/bin/pytest -n $(TEST_PROCESSES) --durations=25 -m "not (faults and cluster)"

## Debian's chromium, which the dashboard's browser test drives.
browser:
	scripts/browser.sh

## The unit tier: settings, the wire format, declarations, the layers; no services.
test-unit: install
	$(VENV)/bin/pytest tests/unit

## Only the fault scenarios: tests/faults on the faults profile's own Kafka,
## Redis and SMTP sink, and the cluster's (tests/cluster, marked `faults`) on
## the cluster profile; prints a row of figures per scenario, also in
## .local/faults/report.json.
test-faults: install
	$(VENV)/bin/pytest tests/faults tests/cluster -m faults --basetemp=.local/faults/runs

## Only the cluster tier: it starts the cluster profile, takes brokers away
## under load, and stops the cluster at the end.
test-cluster: install
	$(VENV)/bin/pytest tests/cluster

## The README's fault table, from the last fault run's .local/faults/report.json.
fault-table:
	$(PYTHON) scripts/fault_table.py

## Benchmark against the raw aiokafka client on the bench services (BENCH_SIZE=small for a smoke run).
BENCH_SIZE ?= full
bench: install
	scripts/services.sh start bench
	$(PYTHON) scripts/bench.py --profile bench --size $(BENCH_SIZE) --out .local/bench/result-$(BENCH_SIZE).json

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy dawning_streams

stop:
	scripts/services.sh stop dev
	scripts/services.sh stop test
	scripts/services.sh stop sasl
	scripts/services.sh stop faults
	scripts/services.sh stop bench
	scripts/services.sh stop cluster

clean: stop
	rm -rf .local $(VENV) *.egg-info
