# Two commands do all set-up on a fresh machine:
#   make demo   set-up, then synthesis on the embedded default input
#   make test   set-up, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-stress lint setup clean bench view-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch from local disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m DualDSynthesisLib.cli.demo --output $(DEMO_OUT)

# The demo's outputs in the browser viewer (duald-view) over the demo's source, on http://127.0.0.1:8080/.
# It reuses demo-output/ while its volumes are newer than the model; otherwise it runs the demo first.
# (A pattern rule with two targets: one run of the recipe makes both, in any GNU make. The names are
# cli/demo.py's OUTPUTS; the venv is an order-only prerequisite, so a reinstall alone re-runs nothing.)
DEMO_OUT := demo-output
DEMO_MODEL := DualDSynthesis/Resources/Models/t1_to_t2.safetensors

$(DEMO_OUT)/mni152_t1_synthetic%nii.gz $(DEMO_OUT)/mni152_t1_expected_error%nii.gz: $(DEMO_MODEL) | $(STAMP)
	$(PY) -m DualDSynthesisLib.cli.demo --output $(DEMO_OUT)

view-demo: $(DEMO_OUT)/mni152_t1_synthetic.nii.gz $(DEMO_OUT)/mni152_t1_expected_error.nii.gz | $(STAMP)
	$(VENV)/bin/duald-view "$$($(PY) -c 'from DualDSynthesisLib.cli.demo import mni152_t1; print(mni152_t1())')" \
		--synthetic $(DEMO_OUT)/mni152_t1_synthetic.nii.gz --heatmap $(DEMO_OUT)/mni152_t1_expected_error.nii.gz

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

# `make test` beside a CPU burner on every core (killed afterwards, also on failure or Ctrl-C): the tests
# that involve signals, servers and training must pass on a busy machine too.
test-stress: $(STAMP)
	@pids=""; for _ in $$(seq $$(nproc)); do yes > /dev/null & pids="$$pids $$!"; done; \
	trap 'kill $$pids 2>/dev/null' EXIT INT TERM; \
	$(PY) -m ruff check . && $(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_synthesis.py
	$(PY) benchmarks/bench_training.py

clean:
	rm -rf $(VENV) demo-output
