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

.PHONY: serve demo test bench protos clean

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

protos: $(VENV)/.dev
	PATH=$(CURDIR)/$(BIN):$$PATH bash protos/generate.sh

clean:
	rm -rf $(VENV) .tools .pytest_cache tests/deploy/crd/node_modules
