# ragvault: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.9
SERVICES := include/devstack/services.sh
WITH_ENV := set -a && source ./.services.env && set +a &&
# Every process of the suite, the services and the benchmarks imports Airflow: compiled once into __pycache__
# instead of from source each time (some machines set PYTHONDONTWRITEBYTECODE for every process).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help install services services-down status test lint demo bench clean

help:
	@echo "make demo           install everything, start local services, seed a small stack, run the backup DAG"
	@echo "make test           install everything, start local services, run the test suite"
	@echo "make services       start the local services (MinIO, Redis, FerretDB, Qdrant emulator, ...) and write .services.env"
	@echo "make services-down  stop them"
	@echo "make lint           ruff"
	@echo "make bench          ragvault's data paths against their baselines (BENCH_ARGS=\"--runs 5 --scale 1\")"

.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv sync --frozen
	@touch $@

install: .venv/.synced
	$(SERVICES) install

services: install
	$(SERVICES) up

services-down:
	$(SERVICES) down

status:
	$(SERVICES) status

test: services
	$(WITH_ENV) .venv/bin/pytest $(PYTEST_ARGS)

lint: .venv/.synced
	.venv/bin/ruff check plugins dags include tests

demo: services
	$(WITH_ENV) .venv/bin/python include/devstack/demo.py

bench: services
	$(WITH_ENV) PYTHONPATH=plugins:include .venv/bin/python -m bench $(BENCH_ARGS)

clean: services-down
	rm -rf .venv .devstack .services.env
