# clinicbot: `make run` starts the demo clinic, `make test` runs the whole suite.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: install run test bench soak lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/clinicbot init --demo
	$(VENV)/bin/clinicbot train
	@echo "Terminal chat instead: .venv/bin/clinicbot chat --as +16175550142"
	CLINICBOT_LOG_FORMAT=$${CLINICBOT_LOG_FORMAT:-text} $(VENV)/bin/clinicbot serve

# The suite in TEST_WORKERS processes (pytest-xdist, a PostgreSQL database each), then the tests that
# must run alone: the short soak restarts PostgreSQL under CI=true.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not serial"
	$(PY) -m pytest -q -m serial

bench: install
	$(PY) bench/run.py

# The fault suite on PostgreSQL: ~3 minutes of traffic under faults; SOAK_SECONDS=60 make soak for less.
soak: install
	$(PY) bench/soak.py

lint: install
	$(VENV)/bin/ruff check bot actions scheduler tests bench

clean:
	rm -rf var .pytest_cache
