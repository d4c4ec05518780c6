#!/usr/bin/env bash
# Regenerates the Python stubs beside the .proto files. tests/test_protos.py checks they are current.
# -I is protos/ and every file lies under seqcast/, so the stubs import each other as seqcast.v1 and
# seqcast.inference (the packages pyproject installs them as), never as top-level modules.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
python -m grpc_tools.protoc -I"$here" --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here"/seqcast/v1/*.proto "$here"/seqcast/inference/*.proto
