# Everything runs from the locked environment in .venv (uv.lock), created on first use.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test interop lint format migrate bench bench-quick wrk install lock clean soak pgbouncer pgbouncer-stop \
	client client-deps client-test
CLIENT := clients/typescript

run: install migrate  ## set up, migrate the database (SQLite by default) and serve on 127.0.0.1:8000
	$(BIN)/todo-api serve --host $(HOST) --port $(PORT)

test: install interop  ## the whole suite (PostgreSQL when TEST_DATABASE_URL is set, else SQLite), then the TypeScript client's
	$(BIN)/pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory client-test

interop: tests/interop/node_modules/.package-lock.json  ## the real Better Auth server the interop tests start

tests/interop/node_modules/.package-lock.json: tests/interop/package-lock.json
	@if command -v npm >/dev/null; then \
		cd tests/interop && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the Better Auth interop tests will skip"; fi

client-deps: $(CLIENT)/node_modules/.package-lock.json

$(CLIENT)/node_modules/.package-lock.json: $(CLIENT)/package-lock.json
	@if command -v npm >/dev/null; then \
		cd $(CLIENT) && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the TypeScript client's tests will skip"; fi

client: install client-deps  ## regenerate the TypeScript client (clients/typescript) from the OpenAPI document
	$(BIN)/todo-api openapi --output $(CLIENT)/openapi.json
	cd $(CLIENT) && npm run --silent generate

client-test: install client-deps  ## the TypeScript client against a real server; fails when its generated files are stale
	@if ! command -v node >/dev/null; then \
		if [ -n "$$TEST_REQUIRE_SERVICES" ]; then echo "client-test: Node.js is required" >&2; exit 1; fi; \
		echo "Node.js not found: the TypeScript client's tests skip"; exit 0; \
	fi; \
	fresh=$$(mktemp); trap 'rm -f "$$fresh"' EXIT; \
	$(BIN)/todo-api openapi --output "$$fresh" && \
	if ! cmp -s "$$fresh" $(CLIENT)/openapi.json; then \
		echo "client-test: $(CLIENT)/openapi.json is stale: run 'make client' and commit" >&2; exit 1; fi && \
	cd $(CLIENT) && npx --no-install openapi-typescript openapi.json --output src/schema.d.ts \
		--default-non-nullable false --check && \
	TODO_API_BIN=$(abspath $(BIN))/todo-api npm test --silent

lint: install  ## ruff and mypy --strict
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

migrate: install
	$(BIN)/todo-api migrate

install: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock | $(BIN)/uv
	$(BIN)/uv sync --frozen --inexact
	@touch $@

$(BIN)/uv:
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"

WORKERS ?= $(shell nproc)

bench: install wrk  ## todo-api vs the yardstick in ../shared/bench, same run (~4 min; PostgreSQL on 127.0.0.1)
	$(BIN)/python bench/run.py --start-todo-api --start-reference --workers $(WORKERS) $(BENCH_ARGS)

bench-quick: install wrk  ## the same, one short run (~1 min)
	$(BIN)/python bench/run.py --start-todo-api --start-reference --workers $(WORKERS) --quick $(BENCH_ARGS)

.PHONY: bench-login-stall bench-scale bench-kafka

bench-kafka: install  ## the relay draining a 20,000-event outbox into a real Kafka-protocol broker (tansu)
	$(BIN)/python bench/kafka_drain.py $(KAFKA_ARGS)

bench-login-stall: install wrk  ## list p99 alone and with 8 clients logging in (bcrypt 12), todo-api and the yardstick (~3 min)
	$(BIN)/python bench/run.py --start-todo-api --start-reference --workers $(WORKERS) --scenarios login-stall $(BENCH_ARGS)

bench-scale: install wrk  ## 1,000,000 tasks by COPY; list/get/create for a 10-task and a 100,000-task user (~7 min)
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

SOAK_SECONDS ?= 600

soak: install wrk  ## mixed load on todo-api serve (PostgreSQL on 127.0.0.1) for SOAK_SECONDS; RSS and DB connections at start and end
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS) --workers $(WORKERS) $(SOAK_ARGS)

PGBOUNCER_PORT ?= 6432
PGBOUNCER_DIR ?= /tmp/todo-api-pgbouncer
PGBOUNCER_UPSTREAM ?= 127.0.0.1:5432

pgbouncer: install  ## PgBouncer in transaction pool mode on 127.0.0.1:PGBOUNCER_PORT in front of PGBOUNCER_UPSTREAM
	@command -v pgbouncer >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer)
	$(BIN)/python -m tests.reliability.services pgbouncer start --dir $(PGBOUNCER_DIR) --port $(PGBOUNCER_PORT) --upstream $(PGBOUNCER_UPSTREAM)
	@echo "use: TEST_DATABASE_URL='postgresql://postgres@127.0.0.1:$(PGBOUNCER_PORT)/DB' TEST_DATABASE_URL_DIRECT='postgresql://postgres@$(PGBOUNCER_UPSTREAM)/DB' make test"

pgbouncer-stop:  ## stop the PgBouncer of `make pgbouncer`
	$(BIN)/python -m tests.reliability.services pgbouncer stop --dir $(PGBOUNCER_DIR)

lock: | $(BIN)/uv  ## refresh uv.lock after editing pyproject.toml
	$(BIN)/uv lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
