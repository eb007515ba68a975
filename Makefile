# sfp-ray: two commands do all the set-up on a fresh machine.
#   make demo   - install, pre-train the offline backbone once (cached), compare sfprompt vs fl_full
#   make test   - install, run the test suite
# Both are idempotent: a second run skips finished steps.
# make docs regenerates docs/configuration.md from sfp_ray/config.py (python -m sfp_ray.docgen).

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
DEMO_OUT ?= runs/demo
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test install data lint docs clean-runs

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
	$(BIN)/sfp-ray compare --methods sfprompt,fl_full --out $(DEMO_OUT)

test: install data
	$(BIN)/python -m pytest -q -p no:cacheprovider

docs: install
	$(BIN)/python -m sfp_ray.docgen

lint: install
	$(BIN)/pip install -q ruff==0.17.5
	$(BIN)/ruff check sfp_ray tests benchmarks

clean-runs:
	rm -rf runs
