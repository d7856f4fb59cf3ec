# The one set of commands people, CI and hooks use.
PY      ?= .venv/bin/python
PIP     ?= .venv/bin/pip
COMPOSE ?= docker compose -f deploy/compose/compose.yaml
PROTOS  := $(wildcard proto/openclaw/v1/*.proto)

.PHONY: help install proto run up down test test-unit test-integration test-e2e lint format bench bench-router bench-gateway demo certs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

install: ## create .venv, install the project with dev tools, generate the gRPC code
	test -x $(PY) || python3.11 -m venv .venv || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps -e examples/openclaw-plugin-sample
	$(MAKE) proto

proto: ## generate openclaw/v1/*_pb2*.py from proto/ (never edit the output)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

run: ## start the whole platform as local processes (simulator, router, executor, gateway)
	$(PY) -m openclaw.cli run

up: ## run deploy/compose (needs a Docker engine)
	$(COMPOSE) up -d --build --wait

down: ## stop and remove the compose stack
	$(COMPOSE) down -v

test: ## every tier, and the sample plugin's own tests
	$(PY) -m pytest tests examples/openclaw-plugin-sample/tests -q

test-unit:
	$(PY) -m pytest tests/unit -q

test-integration:
	$(PY) -m pytest tests/integration -q

test-e2e:
	$(PY) -m pytest tests/e2e -q

lint: ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy openclaw services examples/openclaw-plugin-sample/src

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: ## side-by-side benchmarks against the peers (not part of CI)
	$(PIP) install -q -e '.[dev,bench]'
	$(PY) -m bench.full_path

.PHONY: bench-executor
bench-executor: ## executor: 5,000 trivial tasks through the gateway beside Celery, and the engine's µs per step (not part of CI)
	$(PY) -m bench.executor

demo: ## steady demo traffic against the running gateway (make run or make up first), for the dashboards
	$(PY) -m openclaw.cli demo

bench-gateway: ## accepted tasks/s over HTTP/1.1, HTTP/2, WebSocket and MQTT, and WebSocket connections per GiB
	$(PIP) install -q -e '.[dev,bench]'
	$(PY) -m bench.gateway_protocols

bench-router: ## our router vs the LiteLLM proxy (installed into .bench/ by the benchmark), same simulator
	$(PIP) install -q -e '.[dev,bench]'
	$(PY) -m bench.router

certs: ## development CA and one certificate per service for mutual TLS, into var/certs (idempotent)
	$(PY) -m openclaw.certs --out var/certs

clean:
	rm -rf .venv openclaw/v1/*_pb2*.py openclaw/v1/*_pb2*.pyi .pytest_cache .mypy_cache
