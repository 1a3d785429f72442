# Quick start:  make demo   (sets up .venv, trains the tiny LM on the stdlib corpus, samples)
#               make test   (sets up .venv, runs the default test suite)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TPU_STAMP := $(VENV)/.installed-tpu

.PHONY: demo test test-slow bench clean

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

# libtpu: the kernel tests' TPU AOT compiles on a CPU host (tier 3); not needed to train
$(TPU_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e ".[test,tpu]"
	touch $(TPU_STAMP)

demo: $(STAMP)
	$(BIN)/python -m experiments.train --config configs/lm.py:tiny --workdir runs/tiny

# The suite is dominated by single-threaded XLA compiles: two workers use both CI cores.
TEST_WORKERS ?= 2

test: $(TPU_STAMP)
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

test-slow: $(TPU_STAMP)
	$(BIN)/python -m pytest tests -m slow

bench: $(STAMP)
	$(BIN)/python -m experiments.bench lm

clean:
	rm -rf $(VENV) runs
