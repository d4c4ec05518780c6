"""Decoder state kept in ONNX Runtime's memory between steps (the CUDA path's IO binding),
exercised in host memory: the same tokens and forecasts as numpy state, through joins,
departures and beam reordering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import TINY_FORECASTERS
from seqcast.bundle.decoding import Decoder, forecast_values, greedy_tokens, nbytes
from seqcast.bundle.manifest import Manifest
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.bundle.strategies import BeamSearch, Finish, Greedy, token_sequence


def _models(bundle: Path) -> tuple[OnnxModel, OnnxModel, Manifest]:
    manifest = Manifest.read(bundle)
    plain = OnnxModel.from_manifest(bundle, manifest, RuntimeOptions(device="cpu"))
    bound = OnnxModel.from_manifest(bundle, manifest, RuntimeOptions(device="cpu"))
    bound.state_device = "cpu"  # the CUDA path's binding, in host memory
    return plain, bound, manifest


SOURCES = [[5 + i, 17, 33 + i, 40 + 2 * i, 2] for i in range(6)]


def _staggered(runtime: OnnxModel, manifest: Manifest) -> dict[int, list[int]]:
    """Three greedy texts, then two beam-search texts joining after three steps; tokens per text."""
    special = manifest.special_tokens
    out: dict[int, list[int]] = {i: [] for i in range(5)}

    def emit(i: int):
        def on(token: int | None, finish: Finish | None) -> None:
            if token is not None:
                out[i].append(token)
        return on

    decoder = Decoder(runtime)
    first = [token_sequence(Greedy(), special.eos, 24) for i in range(3)]
    for i, seq in enumerate(first):
        seq.emit = emit(i)
    decoder.join(first, SOURCES[:3], special.pad, np.full(3, special.bos, dtype=np.int64))
    for _ in range(3):
        decoder.step()
        if runtime.state_device is not None:
            assert all(isinstance(v, ort.OrtValue) for v in decoder.batch.state.values()), "state left the device"
    beams = [token_sequence(BeamSearch(beam_size=3), special.eos, 24) for i in (3, 4)]
    for i, seq in zip((3, 4), beams):
        seq.emit = emit(i)
    decoder.join(beams, SOURCES[3:5], special.pad, np.full(2, special.bos, dtype=np.int64))
    while decoder.active:
        decoder.step()
    return out


def test_bound_state_decodes_the_tokens_of_numpy_state(model_dir: Path) -> None:
    plain, bound, manifest = _models(model_dir / "tiny-transformer" / "1")
    special = manifest.special_tokens
    assert greedy_tokens(bound, special, SOURCES, 24) == greedy_tokens(plain, special, SOURCES, 24)
    staggered = _staggered(plain, manifest)
    assert any(staggered.values())
    assert _staggered(bound, manifest) == staggered


@pytest.mark.parametrize("name", ["tiny-forecast-transformer", "tiny-forecast-lstm-dot"])
def test_bound_state_forecasts_the_values_of_numpy_state(model_dir: Path, name: str) -> None:
    assert name in TINY_FORECASTERS
    plain, bound, manifest = _models(model_dir / name / "1")
    rng = np.random.default_rng(0)
    contexts = [rng.normal(size=n).astype(np.float32) for n in (12, 20, 32)]
    point = manifest.forecast.columns.index(manifest.forecast.point)
    expected = forecast_values(plain, contexts, 4, point)
    np.testing.assert_array_equal(forecast_values(bound, contexts, 4, point), expected)


def test_state_size_is_counted_on_the_device_too(model_dir: Path) -> None:
    _, bound, manifest = _models(model_dir / "tiny-transformer" / "1")
    array = np.zeros((2, 4, 3, 16), dtype=np.float32)
    assert nbytes(bound.place(array)) == nbytes(array) == array.nbytes
