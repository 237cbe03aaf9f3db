# analytics-etl: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# The hot path compiled with mypyc (setup.py, etl/compiled.py), in place beside its
# source; rebuilt whenever a listed source changes.  `make COMPILE=0 ...` keeps pure Python.
COMPILED := $(VENV)/.compiled$(if $(filter 0,$(COMPILE)),-off,-on)
COMPILED_SOURCES := $(shell sed -n 's/^    "\(.*\.py\)",$$/\1/p' etl/compiled.py)

.PHONY: install compile demo test lint bench clean

# dbt-duckdb pins pathspec below what the pinned mypy needs: it gets its own venv.
DBT_VENV := .venv-dbt
DBT_STAMP := $(DBT_VENV)/.installed-dbt-1.10

install: $(STAMP) $(DBT_STAMP) $(COMPILED)

compile: $(COMPILED)

$(COMPILED): $(STAMP) setup.py etl/compiled.py $(COMPILED_SOURCES)
	@rm -f $(VENV)/.compiled-*
ifeq ($(COMPILE),0)
	find etl mappers sinks streams -name '*.so' -delete
else
	$(BIN)/python -m pip install --quiet "setuptools>=68"
	$(BIN)/python setup.py --quiet build_ext --inplace
	@# An unchanged module is copied from build/ with its old time: mark all as built now.
	@find etl mappers streams -name '*.so' -exec touch {} +
	@$(BIN)/python -c "from etl.compiled import SOURCES, compiled_modules as c; n = len(c()); \
		assert n == len(SOURCES), f'{n} of {len(SOURCES)} modules compiled'"
endif
	@touch $@

$(DBT_STAMP):
	@test -x $(DBT_VENV)/bin/python || $(PYTHON) -m venv $(DBT_VENV)
	$(DBT_VENV)/bin/python -m pip install --quiet "dbt-core>=1.8,<1.11" "dbt-duckdb>=1.8,<1.10"
	@touch $(DBT_STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	ANALYTICS_ETL_COMPILE=0 $(BIN)/python -m pip install --quiet -e '.[all]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

demo: install
	$(BIN)/etl demo

# Style and types first: they fail in seconds, the suite takes minutes.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Most of the suite's time is spent waiting on worker processes and the broker,
# not on the CPU: test files run side by side (each xdist process has its own
# broker).  TEST_JOBS=0 runs them one after another.
TEST_JOBS ?= 3
test: lint
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile)

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .venv-bqemu $(DBT_VENV) .etl .etl-dev warehouse.duckdb .pytest_cache build
	find etl mappers sinks streams -name '*.so' -delete
