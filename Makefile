# iadet: the README's commands. `make quickstart` and `make test` work on a fresh machine.
PYTHON ?= python
PYTEST_ARGS ?=
CHECK_INSTALLED = $(PYTHON) -c "import iadet, torch, torchvision, pycocotools, yaml, tqdm, pytest, hypothesis, xdist, onnx, onnxscript, onnxruntime" 2>/dev/null

.PHONY: install ensure-installed test test-slow test-all quickstart bench clean reproduce-coco reproduce-voc reproduce-mini compare-mini

install:
	$(PYTHON) -m pip install -e '.[dev]'

ensure-installed:
	@$(CHECK_INSTALLED) || $(MAKE) install

## fast test suite (what CI runs)
test: ensure-installed
	$(PYTHON) -m pytest -m "not slow" -n 2 -q $(PYTEST_ARGS) tests

## slow tests only
test-slow: ensure-installed
	$(PYTHON) -m pytest -m slow -q $(PYTEST_ARGS) tests || [ $$? -eq 5 ]  # 5: no slow test collected

test-all: ensure-installed
	$(PYTHON) -m pytest -n 2 -q $(PYTEST_ARGS) tests

## the main job on the embedded synthetic dataset (see README: Quickstart)
quickstart: ensure-installed
	bash scripts/quickstart.sh

## benchmarks: print iadet / reference ratios measured in the same run (never asserted in tests)
bench: ensure-installed
	$(PYTHON) scripts/bench.py --json-out bench.json

## the paper's experiments (README: Reproduction). DRY_RUN=1: a few iterations on a tiny
## COCO/VOC-shaped synthetic set (tests the recipe on a CPU). ABLATIONS=1 (coco): also the
## R50 [600, 1000] models of Tables 2-4. GPUS=N: train on N GPUs (default: all visible).
COCO_ROOT ?= data/coco
VOC_ROOT ?= data/VOCdevkit
BACKBONES ?= r50
REPRODUCE_ARGS = --backbones "$(BACKBONES)" $(if $(GPUS),--gpus $(GPUS)) $(if $(DRY_RUN),--dry-run) $(if $(ABLATIONS),--ablations)

## METHODS=all (or a list: qfl,vfl,centerness,atss,aligned,aligned_grad,soft_nms,iou_guided_nms): the
## quality family of configs/family/ too (R50)
reproduce-coco: ensure-installed
	$(PYTHON) -m iadet.tools.reproduce coco --root $(COCO_ROOT) $(REPRODUCE_ARGS) $(if $(METHODS),--methods "$(METHODS)")

reproduce-voc: ensure-installed
	$(PYTHON) -m iadet.tools.reproduce voc --root $(VOC_ROOT) $(REPRODUCE_ARGS)

## the paired small-scale study of the paper's claim on the synthetic data (docs/results_mini.md;
## about 3 hours on 2 CPU cores, resumable: run it again to continue). DRY_RUN=1: the whole
## pipeline on a tiny set (seeds 0,1 and control seed 0), about a minute.
MINI_SEEDS ?= 0,1,2,3,4
CONTROL_SEEDS ?= 0,1,2
reproduce-mini: ensure-installed
	$(PYTHON) -m iadet.tools.reproduce mini $(if $(DRY_RUN),--dry-run --seeds "0 1" --control-seeds 0,--seeds "$(MINI_SEEDS)" --control-seeds "$(CONTROL_SEEDS)")

## the quality family ranked by the same paired protocol (docs/results_family.md, issue 16): 14 runs
## a seed, 109-122 min each seed on 2 cores of an AMD EPYC (family 25, model 17), so 9-10 hours
## for the 5 seeds; resumable. DRY_RUN=1: the pipeline on a tiny set (seeds 0,1).
compare-mini: ensure-installed
	$(PYTHON) -m iadet.tools.reproduce family $(if $(DRY_RUN),--dry-run --seeds "0 1",--seeds "$(MINI_SEEDS)")

clean:
	rm -rf build *.egg-info .pytest_cache work_dirs/quickstart
