# Recoup — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install migrate demo worker web reset lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Embedded default: SQLite, django-q2's ORM broker, sandbox gateway, console email/SMS.
# An empty database gets the demo store: 90 days of billing replayed through Recoup.
run: export DEBUG ?= 1
run: $(STAMP)
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py demo_setup --host $(HOST) --port $(PORT)
	@echo "Starting web server on http://$(HOST):$(PORT)/ and a django-q2 worker (Ctrl-C stops both)"
	@trap 'kill 0' INT TERM EXIT; \
	  $(BIN)/python manage.py qcluster & \
	  $(BIN)/python manage.py runserver $(HOST):$(PORT) --noreload

# The whole suite: SQLite unless DATABASE_URL is set.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Starts over: the next `make run` seeds the demo store again.
reset:
	rm -f db.sqlite3 db.sqlite3-wal db.sqlite3-shm db.sqlite3-journal
	@echo "Database removed; 'make run' seeds the demo again."

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
