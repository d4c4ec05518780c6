"""The CUDA execution provider path; skipped where onnxruntime has no CUDA provider (CI)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from seqcast.server.decoding import greedy_tokens
from seqcast.server.manifest import Manifest
from seqcast.server.runtime import OnnxModel, RuntimeOptions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA execution provider"),
]


def test_cuda_sessions_decode_the_same_tokens_as_cpu(model_dir: Path) -> None:
    bundle = model_dir / "tiny-transformer" / "1"
    manifest = Manifest.read(bundle)
    gpu = OnnxModel.from_manifest(bundle, manifest, RuntimeOptions(device="cuda"))
    cpu = OnnxModel.from_manifest(bundle, manifest, RuntimeOptions(device="cpu"))
    assert gpu.provider == "CUDAExecutionProvider"
    sources = [[5 + i, 17, 33 + i, 2] for i in range(8)]
    special = manifest.special_tokens
    assert greedy_tokens(gpu, special, sources, 32) == greedy_tokens(cpu, special, sources, 32)
