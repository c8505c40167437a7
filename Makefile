# Recoup — the two commands: `./run` (which runs `make setup`, then serves) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make run` installs the product with the demo extra (time-machine, the demo's simulated clock;
# matplotlib, simulate's chart); `make test` and `make install` (CI) add the dev and test
# tools (pytest, ruff, playwright).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
RUN_REQS := -e ".[demo]"
DEV_REQS := -e ".[demo,dev]" pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup run test install migrate demo worker web reset lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv --without-pip $(VENV)

# venv_install(requirements): installs into the venv with uv when it can be had (on the
# PATH, or fetched from PyPI into the venv by the interpreter's pip), several times faster
# than pip; with pip otherwise, or if uv fails, or with NO_UV=1. uv reads neither pip.conf
# nor PIP_* variables, so pip's settings (index, extra indexes, find-links, trusted hosts,
# certificate, timeout) are handed to it, and it picks the best version across the indexes
# as pip does.
define venv_install
( set -e; \
  pip="$(PYTHON) -m pip"; \
  uv=$$(command -v uv || true); \
  if [ -z "$$uv" ] && [ -x $(BIN)/uv ]; then uv=$(BIN)/uv; fi; \
  if [ -z "$$uv" ] && [ "$(NO_UV)" != 1 ]; then \
    if $$pip --python $(BIN)/python install -q uv >/dev/null 2>&1 \
      || { $(BIN)/python -m ensurepip --default-pip >/dev/null 2>&1 \
           && pip="$(BIN)/python -m pip" && $$pip install -q uv >/dev/null 2>&1; }; \
    then uv=$(BIN)/uv; fi; \
  fi; \
  if [ -n "$$uv" ] && [ "$(NO_UV)" != 1 ] && ( \
      eval "$$($$pip config list 2>/dev/null | awk '$(PIP_TO_UV)')"; \
      export UV_INDEX_STRATEGY=unsafe-best-match; \
      $$uv pip install -q --python $(BIN)/python $(1) ); then :; \
  else \
    if [ -n "$$uv" ] && [ "$(NO_UV)" != 1 ]; then echo "uv failed: installing with pip"; fi; \
    [ -x $(BIN)/pip ] || $(BIN)/python -m ensurepip --default-pip >/dev/null; \
    $(BIN)/pip install -q $(1); \
  fi )
endef

# `pip config list` (files and PIP_* variables) as uv's variables; for each setting the
# variable wins over the [install] section, which wins over [global], as in pip.
PIP_TO_UV := { i = index($$0, "="); key = substr($$0, 1, i - 1); \
  val = substr($$0, i + 2, length($$0) - i - 2); n = split(key, part, "."); \
  name = part[n]; sect = substr(key, 1, length(key) - length(name) - 1); \
  rank = sect == ":env:" ? 3 : sect == "install" ? 2 : sect == "global" ? 1 : 0; \
  if (rank && rank >= best[name]) { best[name] = rank; v[name] = val } } \
  END { uv["index-url"] = "UV_INDEX_URL"; uv["extra-index-url"] = "UV_EXTRA_INDEX_URL"; \
  uv["find-links"] = "UV_FIND_LINKS"; uv["trusted-host"] = "UV_INSECURE_HOST"; \
  uv["cert"] = "SSL_CERT_FILE"; uv["timeout"] = "UV_HTTP_TIMEOUT"; \
  uv["default-timeout"] = "UV_HTTP_TIMEOUT"; uv["no-index"] = "UV_NO_INDEX"; \
  for (k in v) if (k in uv) { s = v[k]; gsub(/\\n/, " ", s); gsub(/^ +| +$$/, "", s); \
  if (k == "find-links") gsub(/ +/, ",", s); gsub(/'"'"'/, "", s); \
  printf "export %s='"'"'%s'"'"'\n", uv[k], s } }

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	@[ $(STAMP) -nt pyproject.toml ] || { echo "Installing Recoup into $(VENV)/"; \
	  $(call venv_install,$(RUN_REQS)); }
	@touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "Installing Recoup and its dev tools into $(VENV)/"
	@$(call venv_install,$(DEV_REQS))
	@touch $@ $(RUN_STAMP)

install: $(STAMP)

# Embedded default: SQLite, django-q2's ORM broker, sandbox gateway, console email/SMS.
# An empty database gets the demo store: 90 days of billing replayed through Recoup.
# `setup` installs, migrates and seeds; `./run` runs it, then execs `manage.py serve`.
setup run: export DEBUG ?= 1
# migrate runs the system checks; the commands after it skip them (about a second each).
setup: $(RUN_STAMP)
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py demo_setup --skip-checks --host $(HOST) --port $(PORT)

# `serve` runs runserver and qcluster in sessions of their own and stops both on Ctrl-C,
# SIGTERM or SIGHUP (one SIGTERM each), then exits 0. make then re-raises a SIGTERM on itself
# (exit status 143), which `./run` avoids by exec'ing serve itself.
run: setup
	@exec $(BIN)/python manage.py serve --skip-checks --host $(HOST) --port $(PORT)

# The whole suite: SQLite unless DATABASE_URL is set.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
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
