"""The committed stubs in protos/seqcast/v1/ are exactly what protos/generate.sh makes from the .proto."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the stubs")

PROTOS = Path(__file__).resolve().parents[1] / "protos"
GENERATED = ("seqcast_pb2.py", "seqcast_pb2.pyi", "seqcast_pb2_grpc.py")


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    # generate.sh runs `python`: make that this interpreter, whose grpcio-tools version is pinned.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(PROTOS / "generate.sh"), str(tmp_path)], check=True, env=env)
    for name in GENERATED:
        fresh = (tmp_path / "seqcast" / "v1" / name).read_bytes()
        committed = (PROTOS / "seqcast" / "v1" / name).read_bytes()
        assert fresh == committed, f"protos/seqcast/v1/{name} is stale: run protos/generate.sh"
