# Two entry points on a fresh machine:  `make demo`  and  `make test`.
# Each creates ./.venv on first use and installs everything it needs into it.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.repspec-installed

.PHONY: demo test test-random test-thorough bench bench-smoke install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# A CPU build of torch where no GPU is present (2.13.0 installs from local disk on
	@# these machines); otherwise let pip pick the CUDA build the range admits.
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(PY) -m pip install --quiet "torch>=2.2,<3"; \
	else \
	  $(PY) -m pip install --quiet torch==2.13.0 || \
	  $(PY) -m pip install --quiet "torch>=2.2,<3" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/repspec demo

# The suite runs on every core (pytest-xdist; TEST_WORKERS=0 runs it in one process). Each test
# is independent and seeded, so the split between workers does not change any result.
TEST_WORKERS ?= auto

test: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(PY) -m pytest -q -n $(TEST_WORKERS)

# The suite under the random `dev` Hypothesis profile with a fresh seed, printed before and after
# the run so that a failure can be replayed: `make test-random SEED=<seed>`. ARGS narrows the run
# (e.g. ARGS="tests/test_conformance.py -x"). The seed also drives the conformance clauses.
test-random: $(STAMP)
	@seed=$${SEED:-$$($(PY) -c 'import secrets; print(secrets.randbelow(2**32))')}; \
	echo "test-random: HYPOTHESIS_PROFILE=dev, seed $$seed (replay: make test-random SEED=$$seed)"; \
	HYPOTHESIS_PROFILE=dev $(PY) -m pytest -q --hypothesis-seed=$$seed --repspec-seed=$$seed $(ARGS); \
	rc=$$?; echo "test-random: seed $$seed, exit status $$rc (replay: make test-random SEED=$$seed)"; exit $$rc

test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q

# Benchmarks (benchmarks/bench_*.py): `make bench` at the README's sizes (full models at 224x224,
# 10^6-value k-means; tens of minutes on 2 cores), `make bench-smoke` small and quick (CI).
BENCH := $(PY) -m pytest benchmarks -o python_files="bench_*.py" --benchmark-enable -q -s

bench: $(STAMP)
	REPSPEC_BENCH_SIZE=full $(BENCH)

bench-smoke: $(STAMP)
	REPSPEC_BENCH_SIZE=small $(BENCH)

clean:
	rm -rf $(VENV) .hypothesis .benchmarks
