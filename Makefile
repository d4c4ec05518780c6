# seqcast: `make serve` serves the bundled models, `make test` runs the whole test suite.
# Both set themselves up in .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 50051
# apt-get needs root: sudo unless we already are.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: serve demo test bench bench-marian protos clean

# Runtime only (ONNX Runtime, gRPC, tokenizers): no torch.
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

# Training, export and test tools on top (torch==2.13.0 CPU); Debian's prometheus package for
# promtool and the Prometheus server the metrics and deploy tests run; kubectl and the CRD
# validators for the deploy tests (scripts/install-deploy-tools.sh).
$(VENV)/.dev: $(VENV)/.runtime pyproject.toml tests/deploy/crd/package-lock.json
	$(BIN)/python -m pip install -q -e ".[dev]"
	command -v promtool >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)
	bash scripts/install-deploy-tools.sh $(VENV)
	touch $@

# Serves the bundled models, answers a demo translation through the server, keeps serving.
serve: $(VENV)/.runtime
	$(BIN)/python scripts/demo.py --port $(PORT) --keep-serving

# The same demo, then stops the server.
demo: $(VENV)/.runtime
	$(BIN)/python scripts/demo.py --port $(PORT)

test: $(VENV)/.dev
	$(BIN)/python -m pytest

bench: $(VENV)/.dev
	$(BIN)/python bench/decode_speed.py

# Optimum (optimum-onnx) needs transformers 4.x, which conflicts with seqcast's pins: it gets its
# own environment, used only by bench/marian_race.py (torch pinned to the same 2.13.0 wheel).
.venv-optimum/.done:
	$(PYTHON) -m venv .venv-optimum
	.venv-optimum/bin/python -m pip install -q "optimum-onnx[onnxruntime]==0.1.0" "torch==2.13.0" "onnxruntime==1.31.1" "sentencepiece==0.2.3"
	touch $@

# Imported Marian against Optimum, CTranslate2 and transformers (docs/benchmarks.md).
bench-marian: $(VENV)/.dev .venv-optimum/.done
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python bench/marian_race.py --rounds 3

protos: $(VENV)/.dev
	PATH=$(CURDIR)/$(BIN):$$PATH bash protos/generate.sh

clean:
	rm -rf $(VENV) .pytest_cache
