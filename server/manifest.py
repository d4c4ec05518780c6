"""The bundle manifest: what a bundle holds and how its graphs connect.

Written by `seqcast.export` at export time, read by the server at load time; the server takes
every tensor name from here, never from constants in code. A bundle is a directory
`models/<name>/<version>/` with `manifest.json`, `encoder.onnx`, `decoder.onnx` and the
tokenizer. Tensor names follow the Optimum convention (`input_ids`, `encoder_attention_mask`,
`past_key_values.{i}.decoder.key`, `present.{i}.decoder.key`, `logits`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One graph input or output: name, element type, and shape (symbolic axes by name)."""

    name: str
    dtype: Literal["int64", "float32"]
    shape: list[str | int]


class StateSpec(_Frozen):
    """A decoder input whose next value is a decoder output: the KV cache, or an RNN's `h`.

    `init` says where the first step's value comes from: `empty` is zeros with `seq_axis` of
    length 0 (a KV cache before the first token), `encoder` is the encoder output `source`.
    `seq_axis` is the axis that grows by one per step (None for a fixed-size state).
    """

    input: str
    output: str
    init: Literal["empty", "encoder"]
    source: str | None = None
    seq_axis: int | None = None


class StaticSpec(_Frozen):
    """A decoder input that stays fixed for a request: an encoder output, or the source mask.

    `source` names an encoder output, or the encoder input `encoder_attention_mask`.
    `seq_axis` is its source-length axis, used to pad rows of different source lengths.
    """

    input: str
    source: str
    seq_axis: int | None = None


class EncoderSpec(_Frozen):
    file: str = "encoder.onnx"
    input_ids: str = "input_ids"
    attention_mask: str = "encoder_attention_mask"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class DecoderSpec(_Frozen):
    file: str = "decoder.onnx"
    input_ids: str = "input_ids"
    # Per-row positions and the mask over past + new tokens; absent for recurrent decoders.
    position_ids: str | None = None
    attention_mask: str | None = None
    logits: str = "logits"
    state: list[StateSpec]
    static: list[StaticSpec]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class SpecialTokens(_Frozen):
    pad: int
    bos: int
    eos: int


class Parity(_Frozen):
    """Measured at export: ONNX Runtime against PyTorch on the same inputs."""

    tolerance: float
    max_abs_diff_encoder: float
    max_abs_diff_logits: float
    cases: int = Field(description="batch / length / past-length combinations compared")
    sentences: int = Field(description="real sentences decoded greedily for the token checks")
    cached_matches_uncached: bool
    onnx_matches_pytorch: bool


class ExportInfo(_Frozen):
    torch: str
    onnx: str
    onnxruntime: str
    opset: int
    weights_dtype: Literal["float32", "float16"] = Field(
        description="storage type of large weights in the .onnx files; compute is always float32"
    )
    created: str


class Manifest(_Frozen):
    format_version: int = FORMAT_VERSION
    name: str
    version: str
    task: Literal["translation"]
    architecture: Literal["transformer", "gru-attention"]
    # Model dimensions, e.g. layers, heads, head_dim, d_model, vocab_size.
    dims: dict[str, int]
    special_tokens: SpecialTokens
    tokenizer: str = "tokenizer.json"
    max_source_tokens: int
    max_new_tokens: int
    source_language: str = "en"
    target_language: str = "de"
    encoder: EncoderSpec
    decoder: DecoderSpec
    # sha256 of every other file of the bundle, by file name.
    files: dict[str, str]
    export: ExportInfo
    parity: Parity
    # Free-form training record: data, steps, seed, test-split scores.
    training: dict[str, object] = Field(default_factory=dict)

    @classmethod
    def read(cls, bundle_dir: Path) -> "Manifest":
        return cls.model_validate_json((bundle_dir / MANIFEST_FILE).read_text())

    def write(self, bundle_dir: Path) -> None:
        (bundle_dir / MANIFEST_FILE).write_text(self.model_dump_json(indent=2) + "\n")
