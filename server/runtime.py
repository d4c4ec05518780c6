"""ONNX Runtime sessions for one bundle: provider choice, session options, graph checks.

The CUDA execution provider is used where it loads; otherwise CPU. The provider actually in use
is read back from the session (ONNX Runtime silently falls back when CUDA fails to load) and
reported to the caller, which logs and lists it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from seqcast.server.manifest import DecoderSpec, EncoderSpec, Manifest, TensorSpec

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]

_ORT_TYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}


class BundleMismatch(Exception):
    """A bundle's graphs do not match what its manifest says."""


@dataclass(frozen=True)
class RuntimeOptions:
    # "auto": CUDA when onnxruntime-gpu and a GPU are present, else CPU.
    device: Device = "auto"
    # Threads inside one operator. One thread is fastest at small batch on few cores;
    # more help large batches.
    intra_op_threads: int = 1
    # Busy-waiting threads burn a core between steps; off by default on shared machines.
    allow_spinning: bool = False


def _providers(device: Device) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError(
            f"device=cuda was asked for but this onnxruntime has no CUDA provider (available: {available}); "
            "install onnxruntime-gpu or use device=auto"
        )
    return ["CPUExecutionProvider"]


def _session(path: Path, options: RuntimeOptions) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=_providers(options.device))


def _check_io(kind: str, declared: list[TensorSpec], actual: list[ort.NodeArg]) -> None:
    """Names and dtypes must match; axes the manifest calls symbolic must be symbolic in the graph."""
    got = {a.name: a for a in actual}
    if set(got) != {t.name for t in declared}:
        raise BundleMismatch(
            f"{kind} tensors differ from the manifest: graph has {sorted(got)}, "
            f"manifest declares {sorted(t.name for t in declared)}"
        )
    for spec in declared:
        arg = got[spec.name]
        if _ORT_TYPES.get(arg.type) != spec.dtype:
            raise BundleMismatch(f"{kind} {spec.name}: graph type {arg.type}, manifest says {spec.dtype}")
        if len(arg.shape) != len(spec.shape):
            raise BundleMismatch(f"{kind} {spec.name}: graph rank {len(arg.shape)}, manifest shape {spec.shape}")
        for axis, (g, m) in enumerate(zip(arg.shape, spec.shape)):
            if isinstance(m, int) and g != m:
                raise BundleMismatch(f"{kind} {spec.name} axis {axis}: graph size {g}, manifest says {m}")
            if isinstance(m, str) and isinstance(g, int):
                raise BundleMismatch(
                    f"{kind} {spec.name} axis {axis}: manifest says symbolic '{m}' but the graph fixed it to {g}"
                )


class OnnxModel:
    """The encoder and decoder sessions of one bundle, checked against its specs at load."""

    def __init__(
        self,
        bundle_dir: Path,
        encoder: EncoderSpec,
        decoder: DecoderSpec,
        options: RuntimeOptions,
    ) -> None:
        self.encoder_spec = encoder
        self.decoder_spec = decoder
        self.encoder = _session(bundle_dir / encoder.file, options)
        self.decoder = _session(bundle_dir / decoder.file, options)
        _check_io("encoder input", encoder.inputs, self.encoder.get_inputs())
        _check_io("encoder output", encoder.outputs, self.encoder.get_outputs())
        _check_io("decoder input", decoder.inputs, self.decoder.get_inputs())
        _check_io("decoder output", decoder.outputs, self.decoder.get_outputs())
        self.provider = self.decoder.get_providers()[0]
        self._encoder_outputs = [t.name for t in encoder.outputs]
        self._decoder_outputs = [t.name for t in decoder.outputs]

    @classmethod
    def from_manifest(cls, bundle_dir: Path, manifest: Manifest, options: RuntimeOptions) -> "OnnxModel":
        return cls(bundle_dir, manifest.encoder, manifest.decoder, options)

    def encode(self, source: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """source (B, S) token ids or values, attention_mask (B, S) int64 -> every encoder output by name."""
        feeds = {self.encoder_spec.source: source, self.encoder_spec.attention_mask: attention_mask}
        return dict(zip(self._encoder_outputs, self.encoder.run(self._encoder_outputs, feeds)))

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One decoder call: every decoder input by name -> every decoder output by name."""
        return dict(zip(self._decoder_outputs, self.decoder.run(self._decoder_outputs, feeds)))
