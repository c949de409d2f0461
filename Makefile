# The two commands: `make demo` and `make test`. Each creates .venv when missing, then reuses it.
PYTHON ?= python3
VENV := .venv
# tools/install.py installs requirements.lock's pins (no resolving; four pips side by side) and vreid;
# pip installs without byte-compiling its ~21,000 files (about 75 CPU-seconds on this 2-core machine);
# tools/warm_bytecode.py then imports, once, what vreid's processes import, so Python caches that
# bytecode before a run's many processes would all compile it at once; a machine-wide
# PYTHONDONTWRITEBYTECODE must not stop Python from writing that cache
unexport PYTHONDONTWRITEBYTECODE
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install clean bench

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) tools/install.py
	$(PY) tools/warm_bytecode.py
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vreid demo --out outputs/demo

# two pytest-xdist workers, a test file each at a time (its module fixtures stay on one worker), the
# longest files first (tests/conftest.py); each worker has its own Ray head
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

# the unit tier: no Ray, no MLflow server, no training run (a test that starts Ray fails here)
test-fast: $(STAMP)
	VREID_TEST_TIER=fast $(PY) -m pytest -q -m "not integration" tests

bench: $(STAMP)
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_ensemble.py
	$(PY) benchmarks/bench_scale.py

clean:
	rm -rf outputs .pytest_cache
