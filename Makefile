# The two commands a new user needs: `make demo` and `make test` (`make bench`: the benchmarks).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	# torch 2.13.0 cannot be used with PyPI's torchvision; 2.14.1/0.29.1 is the tested pair.
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install torch torchvision
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nnunet-xfer demo -o demo_output

# Two pytest-xdist workers, one test file each at a time (a module's fixtures are built once; the
# session fixtures once per worker): the suite needs about half the wall time on 2 cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20 tests

# Unit tests and the fast reliability cases only (no nnU-Net runs, no browser): under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

# `make bench`: every benchmark once in its quick mode (few rounds, small inputs; minutes, not a
# measurement to quote). Without --quick each script takes the real measurement
# (docs/benchmarks.md). Not part of `make test`. Run from the repository root.
BENCH_PY := $(BIN)/python
bench: $(STAMP)
	$(BENCH_PY) benchmarks/metrics_speed.py --repeats 5
	$(BENCH_PY) benchmarks/convert_throughput.py --quick
	$(BENCH_PY) benchmarks/pretrain_throughput.py --quick
	$(BENCH_PY) benchmarks/architecture_overhead.py --quick
	$(BENCH_PY) benchmarks/trainer_overhead.py --rounds 5 --iterations 2
	$(BENCH_PY) benchmarks/phantom_calibration.py --quick
	$(BENCH_PY) benchmarks/evaluate_scale.py --cases 12 --size 128 --repeats 5
	$(BENCH_PY) benchmarks/measure_speed.py --quick
	$(BENCH_PY) benchmarks/schedule_control.py --sizes 5 --seeds 2 --epochs 1 --iterations 5 \
		--json $${TMPDIR:-/tmp}/schedule_control_smoke.json
	$(BENCH_PY) benchmarks/data_efficiency.py --quick

clean:
	rm -rf $(VENV) demo_output
