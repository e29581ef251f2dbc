# Set-up and checks for sparse-attention-operator. `make demo` and `make test` are the two entry points.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Downloads and builds are cached outside the clone so a fresh clone starts warm.
CACHE_DIR ?= $(HOME)/.cache/sparse-attention-operator
export PIP_CACHE_DIR := $(CACHE_DIR)/pip
EXTRAS := operator,runtime,dev,kernels-build

.PHONY: help venv lint typecheck test test-unit test-e2e crds demo demo-runtime clean tools lint-tools kernels

help:
	@echo "make demo   run the operator end to end on the embedded local cluster"
	@echo "make test   install everything needed and run lint, type checks and every test"

# Import names map onto the design card's folders through directory links (the folder named
# operator/ must never itself be importable: it would shadow the standard library's module).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]' --config-settings editable_mode=strict
	site=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  rm -f $$site/__editable__.sparse_attention_operator*.pth; \
	  mkdir -p $(VENV)/import-links; \
	  ln -sfn $(CURDIR)/operator $(VENV)/import-links/sas_operator; \
	  ln -sfn $(CURDIR)/runtime $(VENV)/import-links/sas_runtime; \
	  echo $(CURDIR)/$(VENV)/import-links > $$site/sas-import-links.pth
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy reaches our packages through the import links, which `-p` does not descend into (and
# sas_operator is a namespace package): name every module of operator/ and runtime/ instead.
PACKAGE_MODULES = $(shell find operator runtime -name '*.py' -not -path '*/csrc/*' | sort | sed \
  -e 's|^operator/|sas_operator/|' -e 's|^runtime/|sas_runtime/|' \
  -e 's|/__init__\.py$$||' -e 's|\.py$$||' -e 's|/|.|g')
typecheck: venv
	$(BIN)/mypy -p hack $(addprefix -m ,$(PACKAGE_MODULES))
	$(BIN)/mypy --explicit-package-bases tests bench

# The cluster demo: local cluster, helm install, the operator as the chart's ServiceAccount,
# examples/sas-minilm.yaml to Ready, then the runtime started locally with the ConfigMap's
# config and the Deployment's command, answering an embeddings and an attention request.
demo: tools
	$(BIN)/python -m hack.demo

# The runtime alone on this machine with examples/runtime.yaml: requests, metrics, SIGTERM drain.
demo-runtime: venv
	$(BIN)/python -m hack.demo_runtime

crds: venv
	$(BIN)/python -m sas_operator.crd --write crds/

# The sparse-attention kernels for sm_90a (nvcc from the cuda-toolkit wheel when no CUDA_HOME);
# SAS_KERNEL_DTYPES / SAS_KERNEL_HEAD_DIMS trim the instantiations.
kernels: venv
	$(BIN)/python -m sas_runtime.kernels.build

test-unit: venv
	$(BIN)/pytest -m "not e2e and not gpu"

# The local cluster's binaries (etcd, Kubernetes, kwok, helm), built from the Go module proxy
# into $(CACHE_DIR) once (6-15 min cold on 2 cores), then reused.
tools: venv
	CACHE_DIR=$(CACHE_DIR) $(BIN)/python -m hack.cluster build

test-e2e: tools
	CACHE_DIR=$(CACHE_DIR) $(BIN)/pytest -m e2e

# checkov and hadolint (tests run them on the chart, the rendered manifests and the Dockerfile)
# live in their own venv under the cache: checkov's dependencies conflict with ours.
LINT_VENV := $(CACHE_DIR)/lint-venv
$(LINT_VENV)/.installed: hack/lint/requirements.txt
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(LINT_VENV)/bin/pip install --quiet -r hack/lint/requirements.txt
	touch $@

lint-tools: $(LINT_VENV)/.installed

test: lint typecheck tools lint-tools
	CACHE_DIR=$(CACHE_DIR) $(BIN)/pytest

clean:
	rm -rf $(VENV) build *.egg-info
