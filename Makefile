# r2ios_d2 — every target installs first (fast and silent when already installed).
#   make demo | make demo-long | make demo-data | make test | make lint | make bench | make install
#   PYTHON=/path/to/python make install   # into an existing (detectron2) environment

SHELL := /bin/bash
VENV ?= .venv
ifeq ($(origin PYTHON), undefined)
PYTHON := $(VENV)/bin/python
OWN_VENV := 1
endif
STAMP := .install-stamps/$(shell echo "$(abspath $(PYTHON))" | md5sum | cut -c1-12)
INSTALL_INPUTS := setup.py pyproject.toml Makefile tools/install_detectron2.py
PYTEST_ARGS ?= -q
export PYTHONWARNINGS ?= ignore::DeprecationWarning,ignore::FutureWarning

.PHONY: install test lint format demo demo-long demo-data bench bench-heldout weights bench-real clean-install

install: $(STAMP)

$(STAMP): $(INSTALL_INPUTS)
ifdef OWN_VENV
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade "pip<25"
	$(PYTHON) -m pip install -q torch==2.14.1 torchvision==0.29.1
else
	@$(PYTHON) -c "import torch, torchvision" || { echo "$(PYTHON) has no torch/torchvision: install them first"; exit 1; }
endif
	$(PYTHON) tools/install_detectron2.py
	$(PYTHON) -m pip install -q --no-build-isolation -e ".[dev]"
	@$(PYTHON) -c "import detectron2, r2ios_d2" && mkdir -p $(dir $(STAMP)) && touch $(STAMP)
	@echo "r2ios_d2 installed for $(PYTHON)"

test: install
	@$(PYTHON) -m pytest $(PYTEST_ARGS) projects_tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: install
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

demo: install
	$(PYTHON) tools/run_demo.py

demo-long: install
	$(PYTHON) tools/run_demo.py --long

demo-data: install
	$(PYTHON) tools/prepare_demo_data.py

bench: install
	$(PYTHON) tools/benchmark.py --speed --ablation --quick

weights: install
	$(PYTHON) tools/convert_vgg16.py --fetch-hed

bench-real: install
	$(PYTHON) tools/benchmark.py --real

bench-heldout: install
	$(PYTHON) tools/benchmark.py --heldout

clean-install:
	rm -rf .install-stamps
