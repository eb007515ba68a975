# sfp-ray: two commands do all the set-up on a fresh machine.
#   make demo   - install, pre-train the offline backbone once (cached), compare sfprompt vs fl_full
#                 over seeds 0,1,2 on Ray client actors (mean ± 95% CI), then project the paper's
#                 thin cut (no client blocks) next to the default cut
#   make test   - install, run the test suite
#   make test-fast - the suite without the tests marked slow (Ray clusters, CLI subprocesses, many rounds)
#   make bench-flower - peer benchmark against Flower's Ray simulation (benchmarks/peers/README.md)
# Both are idempotent: a second run skips finished steps.
# make docs regenerates docs/configuration.md from sfp_ray/config/schema.py (python -m sfp_ray.docgen).

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
DEMO_OUT ?= runs/demo
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-fast install data lint docs clean-runs bench-flower

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

# Fashion-MNIST from the Debian package (offline); skipped when already present or when
# the files sit in ./data/fashion-mnist or $$SFP_DATA_ROOT.
data:
	@if [ -f $(FMNIST) ] || [ -f data/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || \
	    { [ -n "$$SFP_DATA_ROOT" ] && [ -f "$$SFP_DATA_ROOT/t10k-labels-idx1-ubyte.gz" ]; }; then \
	  echo "fashion-mnist: present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "fashion-mnist: installing the Debian package dataset-fashion-mnist"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "fashion-mnist: not found and no apt-get; put the idx .gz files in data/fashion-mnist (see README)"; \
	fi

demo: install data
	$(BIN)/sfp-ray pretrain
	$(BIN)/sfp-ray compare --methods sfprompt,fl_full --seeds 0,1,2 --out $(DEMO_OUT)
	@echo "client FLOPs of the paper's thin cut (head/tail blocks 0/0) vs the default cut (1/1), projected:"
	$(BIN)/sfp-ray project --methods sfprompt,fl_full --set split.head_blocks=0 --set split.tail_blocks=0 \
	  --out $(DEMO_OUT)/project-cut-0-0
	$(BIN)/sfp-ray project --methods sfprompt,fl_full --out $(DEMO_OUT)/project-cut-1-1

test: install data
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install data
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

docs: install
	$(BIN)/python -m sfp_ray.docgen

lint: install
	$(BIN)/pip install -q ruff==0.17.5
	$(BIN)/ruff check sfp_ray tests benchmarks

clean-runs:
	rm -rf runs

# Peer benchmark: sfp-ray vs Flower 1.41's Ray simulation on the same FedAvg work
# (benchmarks/peers/README.md). Flower lives in its own venv - it pins ray 2.55.1 and
# protobuf<7 - and is never a dependency of sfp-ray. Extra arguments: BENCH_FLOWER_ARGS="--pairs 1".
FLOWER_VENV := .venv-flower
FLOWER_PY ?= $(shell command -v python3.11 2>/dev/null || echo $(PY))
FLOWER_STAMP := $(FLOWER_VENV)/.installed-stamp
FLOWER_PINS := torch==2.14.1 torchvision==0.29.1 timm==1.0.31 "flwr[simulation]==1.41.0"
BENCH_FLOWER_ARGS ?=

$(FLOWER_STAMP): Makefile
	@test -x $(FLOWER_VENV)/bin/python || $(FLOWER_PY) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/pip install -q $(FLOWER_PINS)
	@touch $(FLOWER_STAMP)

bench-flower: install data $(FLOWER_STAMP)
	$(BIN)/python benchmarks/peers/compare_flower.py --flower-python $(FLOWER_VENV)/bin/python $(BENCH_FLOWER_ARGS)
