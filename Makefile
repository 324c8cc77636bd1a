# Two commands do all set-up on a fresh machine:
#   make demo   set-up, then synthesis on the embedded default input
#   make test   set-up, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean bench view-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch from local disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m DualDSynthesisLib.cli.demo --output demo-output

# The demo's outputs in the browser viewer (duald-view) over the demo's source, on http://127.0.0.1:8080/.
view-demo: demo
	$(VENV)/bin/duald-view "$$($(PY) -c 'from DualDSynthesisLib.cli.demo import mni152_t1; print(mni152_t1())')" \
		--synthetic demo-output/mni152_t1_synthetic.nii.gz --heatmap demo-output/mni152_t1_expected_error.nii.gz

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_synthesis.py
	$(PY) benchmarks/bench_training.py

clean:
	rm -rf $(VENV) demo-output
