# The two commands a new user needs: `make demo` and `make test` (`make bench`: the benchmarks).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench

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

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

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
	if [ -f benchmarks/evaluate_scale.py ]; then $(BENCH_PY) benchmarks/evaluate_scale.py --quick; fi
	if [ -f benchmarks/schedule_control.py ]; then $(BENCH_PY) benchmarks/schedule_control.py --quick; fi

clean:
	rm -rf $(VENV) demo_output
