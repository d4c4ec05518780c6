"""The committed stubs in protos/seqcast/v1/ and protos/seqcast/inference/ are exactly what
protos/generate.sh makes from the .proto files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the stubs")

PROTOS = Path(__file__).resolve().parents[1] / "protos"
GENERATED = [f"seqcast/{package}/{stem}{suffix}" for package, stem in (("v1", "seqcast"), ("inference", "grpc_service"))
             for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    # generate.sh runs `python`: make that this interpreter, whose grpcio-tools version is pinned.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(PROTOS / "generate.sh"), str(tmp_path)], check=True, env=env)
    for name in GENERATED:
        fresh = (tmp_path / name).read_bytes()
        committed = (PROTOS / name).read_bytes()
        assert fresh == committed, f"protos/{name} is stale: run protos/generate.sh"


def test_inference_stubs_import_within_seqcast() -> None:
    # Installed, the stubs live in seqcast.inference: they must not import a top-level module.
    generated = (PROTOS / "seqcast" / "inference" / "grpc_service_pb2_grpc.py").read_text()
    assert "from seqcast.inference import grpc_service_pb2" in generated
