"""The CUDA execution provider path; skipped where onnxruntime has no CUDA provider (CI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from seqcast.bundle.decoding import Decoder, greedy_tokens
from seqcast.bundle.manifest import Manifest
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.bundle.strategies import GreedySequence

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


def test_cuda_decoder_state_stays_on_the_gpu_between_steps(model_dir: Path) -> None:
    bundle = model_dir / "tiny-transformer" / "1"
    manifest = Manifest.read(bundle)
    gpu = OnnxModel.from_manifest(bundle, manifest, RuntimeOptions(device="cuda"))
    assert gpu.state_device == "cuda"
    special = manifest.special_tokens
    decoder = Decoder(gpu)
    sequences = [GreedySequence(special.eos, 16) for _ in range(4)]
    for seq in sequences:
        seq.emit = lambda token, finish: None
    decoder.join(sequences, [[5 + i, 17, 2] for i in range(4)], special.pad, np.full(4, special.bos, dtype=np.int64))
    decoder.step()
    for value in [*decoder.batch.state.values(), *decoder.batch.static.values()]:
        assert isinstance(value, ort.OrtValue) and value.device_name().lower() == "cuda"
