"""ONNX Runtime sessions for one bundle: provider choice, session options, graph checks.

The CUDA execution provider is used where it loads; otherwise CPU. The provider actually in use
is read back from the session (ONNX Runtime silently falls back when CUDA fails to load) and
reported to the caller, which logs and lists it.

On CUDA the decoder's state stays on the GPU between steps: encoder outputs are placed there
once when rows join, and each step's KV cache outputs are bound to GPU memory (IO binding) and
fed straight back as the next step's inputs. Only the step's last output (logits or forecast
values) and the small inputs (the fed token, positions, mask) cross to and from the host. On CPU
`run` takes and returns numpy arrays, which already live where the computation happens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from seqcast.bundle.manifest import DecoderSpec, EncoderSpec, Manifest, TensorSpec

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


# ONNX Runtime's graph fusions left out on CPU. SkipLayerNormFusion merges a residual Add with
# the LayerNormalization after it; a session of the CPU SkipLayerNormalization kernel it makes
# takes 34 µs a call on 16 rows of 256, one of Add and LayerNormalization 15 (105 against 27 on
# 64 rows), and Marian decoder steps ran 8% (int8) and 4% (float32) slower at batch 16 with it,
# no faster at batch 1 (`bench/fusions.py`). Graphs that already hold the fused op keep it.
CPU_DISABLED_FUSIONS = ["SkipLayerNormFusion"]


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    """The session settings of every bundle session (benchmarks that build sessions of their own
    use them too; on CPU pass `disabled_optimizers=CPU_DISABLED_FUSIONS` beside them)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
    so.log_severity_level = 3
    return so


def _session(path: Path, options: RuntimeOptions) -> ort.InferenceSession:
    providers = _providers(options.device)
    disabled = CPU_DISABLED_FUSIONS if providers == ["CPUExecutionProvider"] else []
    return ort.InferenceSession(str(path), sess_options=session_options(options), providers=providers, disabled_optimizers=disabled)


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


class _ArenaShrinker:
    """When a session's memory arena gives back what a large batch made it grow to.

    ONNX Runtime's CPU arena keeps its peak for good: after one 1,024-series forecast a server
    holds 550 MiB instead of 110. Without the arena, each call allocates afresh, which made 256-row
    forecast batches 1.15-1.6x slower. So the arena stays, and a call whose batch has at most a
    quarter of the rows of the largest batch since the last shrink asks ONNX Runtime to release
    the arena's unused memory at its end. That happens when load falls, or with the first call
    after a large request, a few times per peak, not per step. Peaks under `LARGE` rows are left
    alone: what they hold is small, and small batches come and go at every step.
    """

    LARGE = 64

    def __init__(self) -> None:
        self._peak = 0
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def options(self, rows: int) -> ort.RunOptions | None:
        if self._peak >= self.LARGE and rows * 4 <= self._peak:
            self._peak = rows
            return self._shrink
        self._peak = max(self._peak, rows)
        return None


def _rows(value: np.ndarray | ort.OrtValue) -> int:
    return int(value.shape[0]) if isinstance(value, np.ndarray) else int(value.shape()[0])


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
        # `InferenceSession.run` checks the feed's names in Python before every call, which ONNX
        # Runtime checks again inside: 13 µs a step at batch 1, 3% of an int8 step. The feeds
        # here are built from the specs matched against the graphs above, so calls go straight
        # to the compiled session's run (same arguments, same errors).
        self._encoder_run = self.encoder._sess.run
        self._decoder_run = self.decoder._sess.run
        self._encoder_outputs = [t.name for t in encoder.outputs]
        self._decoder_outputs = [t.name for t in decoder.outputs]
        # Outputs read on the host every step; the rest stay where they are computed: state, and
        # alignments, which the decoding loop copies only in steps where a request asked for them.
        device_outputs = {s.output for s in decoder.state} | {decoder.alignments}
        self._host_outputs = {name for name in self._decoder_outputs if name not in device_outputs}
        # Where decoder state lives between steps: the GPU with the CUDA provider; None keeps
        # numpy arrays on the host. ("cpu" runs the device path in host memory, for tests.)
        self.state_device: str | None = "cuda" if self.provider == "CUDAExecutionProvider" else None
        self._encoder_arena = _ArenaShrinker()
        self._decoder_arena = _ArenaShrinker()

    @classmethod
    def from_manifest(cls, bundle_dir: Path, manifest: Manifest, options: RuntimeOptions) -> "OnnxModel":
        return cls(bundle_dir, manifest.encoder, manifest.decoder, options)

    def encode(self, source: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """source (B, S) token ids or values, attention_mask (B, S) int64 -> every encoder output by name."""
        feeds = {self.encoder_spec.source: source, self.encoder_spec.attention_mask: attention_mask}
        run_options = self._encoder_arena.options(len(source))
        return dict(zip(self._encoder_outputs, self._encoder_run(self._encoder_outputs, feeds, run_options)))

    def place(self, value: np.ndarray | ort.OrtValue) -> np.ndarray | ort.OrtValue:
        """A decoder input moved to where state lives between steps (unchanged when it is there)."""
        if self.state_device is None or not isinstance(value, np.ndarray):
            return value
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self.state_device, 0)

    def step(self, feeds: dict[str, np.ndarray | ort.OrtValue]) -> dict[str, np.ndarray | ort.OrtValue]:
        """One decoder call: every decoder input by name -> every decoder output by name.

        With `state_device` set, state outputs (and alignments) come back as OrtValues on that
        device, state ready to be fed to the next step; the other outputs are numpy arrays.
        """
        run_options = self._decoder_arena.options(_rows(next(iter(feeds.values()))))
        if self.state_device is None:
            return dict(zip(self._decoder_outputs, self._decoder_run(self._decoder_outputs, feeds, run_options)))
        binding = self.decoder.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        for name in self._decoder_outputs:
            if name in self._host_outputs:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, self.state_device, 0)
        self.decoder.run_with_iobinding(binding, run_options)
        return {name: value.numpy() if name in self._host_outputs else value
                for name, value in zip(self._decoder_outputs, binding.get_outputs())}
