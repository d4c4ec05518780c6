# seqcast: `make serve` serves the bundled models, `make test` runs the whole test suite.
# Both set themselves up inside the project on first use: .venv (PyPI), and for the tests
# .tools/bin (promtool and prometheus from Debian's package, unpacked, never installed) and
# tests/deploy/crd/node_modules (npm). Nothing is installed system-wide; no root needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 50051
# Empty: the server's default (9464); 0 picks a free port.
METRICS_PORT ?=
DEMO := scripts/demo.py --port $(PORT) $(if $(METRICS_PORT),--metrics-port $(METRICS_PORT))

.PHONY: serve demo test bench bench-marian protos clean

# The server and the client with plots (`seqcast-client forecast --plot`): no torch.
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[server,plot]"
	touch $@

# Training, export and test tools on top (torch==2.13.0 CPU); promtool, the Prometheus server,
# kubectl and the CRD validators for the metrics and deploy tests (scripts/install-deploy-tools.sh).
$(VENV)/.dev: $(VENV)/.runtime pyproject.toml tests/deploy/crd/package-lock.json scripts/install-deploy-tools.sh
	$(BIN)/python -m pip install -q -e ".[dev]"
	bash scripts/install-deploy-tools.sh $(VENV)
	touch $@

# Serves the bundled models, answers a demo translation through the server, keeps serving.
serve: $(VENV)/.runtime
	$(BIN)/python $(DEMO) --keep-serving

# The same demo, then stops the server.
demo: $(VENV)/.runtime
	$(BIN)/python $(DEMO)

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
	rm -rf $(VENV) .tools .pytest_cache tests/deploy/crd/node_modules
