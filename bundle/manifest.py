"""The bundle manifest: what a bundle holds and how its graphs connect.

Written by `seqcast.export` at export time, read by the server at load time; the server takes
every tensor name from here, never from constants in code. A bundle is a directory
`models/<name>/<version>/` with `manifest.json`, `encoder.onnx`, `decoder.onnx` and, for
translation, the tokenizer. Tensor names follow the Optimum convention (`input_ids`,
`encoder_attention_mask`, `past_key_values.{i}.decoder.key`, `present.{i}.decoder.key`,
`logits`, ...); forecasting graphs take `input_values` and return `quantiles` (or `mean`).
The `precision` section says whether the weights are float32 (as exported), int8 or fp16, how
the bundle was made and how it scored against its float32 source (`seqcast quantize`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    # The source sequence: token ids (int64) or scaled values (float32), (batch, source_length).
    source: str = "input_ids"
    attention_mask: str = "encoder_attention_mask"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class DecoderSpec(_Frozen):
    file: str = "decoder.onnx"
    # The input that takes the previous step's choice (a token id, or a forecast value), and the
    # output it is chosen from (logits, or forecast columns).
    feed: str = "input_ids"
    output: str = "logits"
    # Per-row positions and the mask over past + new tokens; absent for recurrent decoders.
    position_ids: str | None = None
    attention_mask: str | None = None
    state: list[StateSpec]
    static: list[StaticSpec]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # Optional output (B, new_tokens, source_length): one cross-attention layer's probabilities
    # averaged over heads (word alignments); each row sums to 1 over real source tokens, 0 on
    # padding. The step computes it anyway; a caller that does not want it need not read it.
    alignments: str | None = None

    @model_validator(mode="after")
    def _alignments_is_an_output(self) -> "DecoderSpec":
        if self.alignments is not None and self.alignments not in {t.name for t in self.outputs}:
            raise ValueError(f"decoder alignments {self.alignments!r} is not one of the decoder outputs")
        return self


class SpecialTokens(_Frozen):
    pad: int
    bos: int
    eos: int


class Parity(_Frozen):
    """Measured at export: ONNX Runtime against PyTorch on the same inputs."""

    tolerance: float
    max_abs_diff_encoder: float
    max_abs_diff_decoder: float
    cases: int = Field(description="batch / length / past-length combinations compared")
    sentences: int = Field(description="real sentences (or series) decoded for the cached/uncached checks")
    cached_matches_uncached: bool
    onnx_matches_pytorch: bool
    # Forecasts only: whole forecasts of real held-out windows, ONNX Runtime against PyTorch, in
    # scaled units (relative to each series' scale) and in the data's own units; and, for
    # transformers, cached against uncached decoding in scaled units.
    max_abs_diff_forecast_scaled: float | None = None
    max_abs_diff_forecast_data: float | None = None
    max_abs_diff_cached_uncached: float | None = None
    # Imported models only: ONNX Runtime's cached step-by-step logits against the source
    # framework's own model (e.g. transformers' MarianMTModel) on real sentences.
    max_abs_diff_source_model: float | None = None


class ForecastSpec(_Frozen):
    """How a forecasting bundle is fed and read.

    The decoder output has one column per entry of `columns`: the quantile levels, ascending,
    or `["mean"]` for a point model. The column `point` (the median "0.5", or "mean") is the
    point forecast and is fed back as the next step's input. Values pass through `scaling`
    (see `seqcast.export.forecast.series.MeanAbsScaler`) fitted per series on the context the model sees:
    the last `context_length` values of a longer series.
    """

    columns: list[str]
    point: str
    context_length: int
    min_context: int
    max_horizon: int
    scaling: dict[str, object]
    frequency: str = Field(description="pandas offset alias of the training data, e.g. QS, 30min")
    season_length: int

    @property
    def quantile_levels(self) -> list[float]:
        return [float(c) for c in self.columns if c != "mean"]

    @model_validator(mode="after")
    def _point_is_a_column(self) -> "ForecastSpec":
        if self.point not in self.columns:
            raise ValueError(f"point column {self.point!r} is not one of the columns {self.columns}")
        if not 1 <= self.min_context <= self.context_length:
            raise ValueError(f"min_context {self.min_context} must lie in 1..context_length {self.context_length}")
        levels = self.quantile_levels
        if levels != sorted(levels) or not all(0 < q < 1 for q in levels):
            raise ValueError(f"quantile levels must be ascending and inside (0, 1), got {levels}")
        return self


class ExportInfo(_Frozen):
    torch: str
    onnx: str
    onnxruntime: str
    opset: int
    weights_dtype: Literal["float32", "float16", "int8"] = Field(
        description="storage type of large weights in the .onnx files; compute is float32 but in fp16 bundles"
    )
    created: str


class Quality(_Frozen):
    """A precision variant's quality against the float32 bundle it was made from, measured when it
    was made: chrF on a translation test split, or MASE on forecast test windows."""

    metric: Literal["chrF", "MASE"]
    # Translation: the most chrF points the variant may lose. Forecast: the most relative MASE
    # increase (0.01 = 1%).
    bar: float
    split: str
    items: int = Field(description="sentences or windows scored")
    subset: bool = Field(description="true when only the first `items` of the split were scored")
    reference: float = Field(description="the float32 source bundle's score")
    value: float = Field(description="this bundle's score")
    passed: bool
    # Translation only.
    bleu_reference: float | None = None
    bleu: float | None = None
    # Teacher-forced: reference tokens fed to both decoders, |log p(reference token)| compared.
    max_abs_delta_logp: float | None = None
    mean_abs_delta_logp: float | None = None
    teacher_forced_tokens: int | None = None


class PrecisionInfo(_Frozen):
    """How the bundle's weights are stored and computed, and how the bundle was made.

    Bundles written before precision variants existed have no such section and read as fp32.
    """

    precision: Literal["fp32", "int8", "fp16"] = "fp32"
    method: str = "exported"
    # Execution providers the bundle is made for: int8 for CPU (integer MatMul kernels), fp16 for CUDA.
    devices: list[Literal["cpu", "cuda"]] = Field(default_factory=lambda: ["cpu", "cuda"])
    # The bundle it was converted from ("name vVERSION") and that bundle's decoder checksum.
    source: str | None = None
    source_decoder_sha256: str | None = None
    # Op counts by graph file: the weight ops that read converted weights (int8: MatMulInteger and
    # the embedding's Gather; fp16: MatMul, Gather), and the MatMuls with a weight before conversion.
    quantized_ops: dict[str, dict[str, int]] = Field(default_factory=dict)
    weight_matmuls: dict[str, int] = Field(default_factory=dict)
    # Bytes by file name.
    file_sizes: dict[str, int] = Field(default_factory=dict)
    quality: Quality | None = None


class ImportSource(_Frozen):
    """Where an imported bundle came from: a local checkpoint of another framework."""

    framework: Literal["huggingface"]
    model_type: str
    # config.json's `_name_or_path` (often the hub name it was first saved from), and the
    # directory it was imported from.
    name_or_path: str | None = None
    directory: str
    # sha256 of the checkpoint files the bundle was made from, by file name.
    files: dict[str, str] = Field(default_factory=dict)


class Manifest(_Frozen):
    format_version: int = FORMAT_VERSION
    name: str
    version: str
    task: Literal["translation", "forecast"]
    # "marian": a post-layer-norm transformer imported from a Hugging Face Marian checkpoint.
    architecture: Literal["transformer", "marian", "gru-attention", "lstm-additive", "lstm-dot", "ar", "mlp"]
    # Model dimensions, e.g. layers, heads, head_dim, d_model, vocab_size.
    dims: dict[str, int]
    # Translation only: tokens, tokenizer file and limits.
    special_tokens: SpecialTokens | None = None
    # `tokenizer` encodes the source; `target_tokenizer`, where present, decodes the output
    # (a source and a target vocabulary, as Marian has them); otherwise `tokenizer` does both.
    tokenizer: str | None = None
    target_tokenizer: str | None = None
    max_source_tokens: int | None = None
    max_new_tokens: int | None = None
    source_language: str | None = None
    target_language: str | None = None
    # Translation with decoder alignments: the decoder layer whose cross-attention they are.
    alignment_layer: int | None = None
    # Forecast only.
    forecast: ForecastSpec | None = None
    encoder: EncoderSpec
    decoder: DecoderSpec
    # sha256 of every other file of the bundle, by file name.
    files: dict[str, str]
    export: ExportInfo
    parity: Parity
    # fp32 unless the bundle is an int8 or fp16 variant; absent in older manifests.
    precision: PrecisionInfo = Field(default_factory=PrecisionInfo)
    # Free-form training record: data, steps, seed, test-split scores.
    training: dict[str, object] = Field(default_factory=dict)
    # Imported bundles only: the checkpoint they were made from.
    source: ImportSource | None = None

    @model_validator(mode="after")
    def _task_fields(self) -> "Manifest":
        if self.task == "translation":
            missing = [f for f in ("special_tokens", "tokenizer", "max_source_tokens", "max_new_tokens") if getattr(self, f) is None]
            if missing or self.forecast is not None:
                raise ValueError(f"a translation manifest needs {missing} and no forecast section")
            if (self.decoder.alignments is None) != (self.alignment_layer is None):
                raise ValueError("decoder.alignments and alignment_layer go together: set both or neither")
        elif self.forecast is None or self.tokenizer is not None:
            raise ValueError("a forecast manifest needs a forecast section and no tokenizer")
        return self

    @classmethod
    def read(cls, bundle_dir: Path) -> "Manifest":
        return cls.model_validate_json((bundle_dir / MANIFEST_FILE).read_text())

    def write(self, bundle_dir: Path) -> None:
        (bundle_dir / MANIFEST_FILE).write_text(self.model_dump_json(indent=2) + "\n")
