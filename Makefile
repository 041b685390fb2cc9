# iadet: the README's commands. `make quickstart` and `make test` work on a fresh machine.
PYTHON ?= python
PYTEST_ARGS ?=
CHECK_INSTALLED = $(PYTHON) -c "import iadet, torch, torchvision, pycocotools, yaml, tqdm, pytest, hypothesis, xdist" 2>/dev/null

.PHONY: install ensure-installed test test-slow test-all quickstart bench clean

install:
	$(PYTHON) -m pip install -e '.[dev]'

ensure-installed:
	@$(CHECK_INSTALLED) || $(MAKE) install

## fast test suite (what CI runs)
test: ensure-installed
	$(PYTHON) -m pytest -m "not slow" -n 2 -q $(PYTEST_ARGS) tests

## slow tests only
test-slow: ensure-installed
	$(PYTHON) -m pytest -m slow -q $(PYTEST_ARGS) tests || [ $$? -eq 5 ]  # 5: no slow tests yet

test-all: ensure-installed
	$(PYTHON) -m pytest -n 2 -q $(PYTEST_ARGS) tests

## the main job on the embedded synthetic dataset (see README: Quickstart)
quickstart: ensure-installed
	bash scripts/quickstart.sh

## benchmarks: print iadet / reference ratios measured in the same run (never asserted in tests)
bench: ensure-installed
	$(PYTHON) scripts/bench_nms.py
	$(PYTHON) scripts/bench_data.py

clean:
	rm -rf build *.egg-info .pytest_cache work_dirs/quickstart
