"""How the runtime sets up ONNX Runtime sessions on CPU (`seqcast.bundle.runtime`)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

import seqcast.bundle.runtime as runtime
from seqcast.bundle.loading import open_bundle

EN_DE = Path(__file__).resolve().parents[1] / "models" / "en-de" / "1"


def test_cpu_sessions_leave_out_the_skip_layer_norm_fusion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its CPU kernel is 2-4x slower than the Add and LayerNormalization it replaces from 16 rows
    on (bench/fusions.py); both the encoder's and the decoder's sessions go without it."""
    made: list[object] = []
    session = ort.InferenceSession

    def recording(*args: object, **kwargs: object) -> ort.InferenceSession:
        made.append(kwargs.get("disabled_optimizers"))
        return session(*args, **kwargs)

    monkeypatch.setattr(runtime.ort, "InferenceSession", recording)
    open_bundle(EN_DE, runtime.RuntimeOptions(device="cpu"))
    assert made == [["SkipLayerNormFusion"], ["SkipLayerNormFusion"]]
