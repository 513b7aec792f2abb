# The two set-up commands of the README are `make run` and `make test`; everything else here is
# what they are made of. Nothing is assumed installed but python3 (>= 3.11) and, for the browser,
# nginx and load tests, Debian's apt-get (run as root, as on CI).

PY ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON := $(PY)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

HOST ?= 127.0.0.1
PORT ?= 8000
SANDBOX_PORT ?= 8010

.PHONY: run test env lint typecheck pytest system-deps bench clean

## run: create the environment and start the main job: the service plus the sandbox amoCRM
## (demo account and integration), on the embedded SQLite database
run: env
	$(BIN)/amobridge demo --host $(HOST) --port $(PORT) --sandbox-port $(SANDBOX_PORT)

## test: create the environment, then lint, type-check and run the whole test suite
test: env system-deps lint typecheck pytest

$(UV):
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# uv installs exactly what uv.lock pins (--frozen: a stale lock is an error, never re-resolved).
# --compile-bytecode writes the dependencies' .pyc files once, at install: where
# PYTHONDONTWRITEBYTECODE is set Python never writes them, and every `amobridge` command and test
# subprocess compiled SQLAlchemy, FastAPI and the rest from source again (seconds each).
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet --compile-bytecode
	touch $@

env: $(VENV)/.synced

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: env
	$(BIN)/mypy

pytest: env
	$(BIN)/pytest $(PYTEST_ARGS)

# System packages the tests need: Debian's chromium (browser tests), nginx (reverse-proxy tests),
# wrk (load generator for bench/). Installed only when missing.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## bench: run the benchmarks (prints tables, writes bench/results/*.json)
bench: env system-deps
	$(BIN)/python bench/run.py

## lock: re-resolve uv.lock after editing pyproject.toml
lock: $(UV)
	$(UV) lock

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
