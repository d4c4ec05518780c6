"""Precision variants of one ONNX graph: int8 weights for CPU, float16 for CUDA.

Builds on `onnx` graph edits and ONNX Runtime's own tooling: `onnxruntime.quantization` for int8
and `onnxruntime.transformers.float16` for fp16.

Exported graphs store large weights as float16 initializers behind a Cast to float32 (see
`onnx_export`), and the tied output projection reads the embedding through a Transpose. A
quantizer only quantizes a MatMul whose weight *is* an initializer, so on those graphs it finds
nothing to do. `fold_weights` first turns every Cast or Transpose of an initializer into a
float32 initializer of its own; after that every weight MatMul, the output projection included,
is visible to the quantizer.

The default int8 form, `qint8-per-row`, quantizes each weight MatMul's activations dynamically
with one scale per row (per token), as CTranslate2 does, so a sentence's numbers never depend on
the sentences sharing its batch: in-flight batching returns what decoding alone returns
(`per_row_matmuls`). Weights are 8-bit with one scale per output column and activations 8-bit
(7 bits) per row, both symmetric, activations stored as uint8 around a zero point; ONNX Runtime
fuses each MatMulInteger with its scaling into MatMulIntegerToFloat, which keeps the per-row scales. The embedding Gathers are quantized with a
fixed scale (int8 table, DequantizeLinear after the lookup), which is where most of the size goes;
a lookup reads one row, so that is per row too. Before the MatMuls are rewritten,
`biases.move_biases` takes the bias Adds it can out of the graph (each one is a node of its own
after a quantized MatMul). No calibration data is needed and the graph takes
and returns float32 tensors as before. Transformer graphs whose attention is written out op by op
(exported before attention became one ONNX Attention node) first go through ONNX Runtime's
transformer optimizer (`fuse_transformer`; `precision.quantize_bundle` does so for int8
transformers, where it measured faster).

The other forms measured stay selectable (`INT8_FORMS`) to repeat the comparison in
docs/benchmarks.md: ONNX Runtime's `quantize_dynamic` (one activation scale per call, for the
whole batch: fast, but a sentence's tokens can change with its batch-mates) and MatMulNBits.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

from seqcast.export.biases import move_biases, weight_of

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "fp16")

# Storage types of converted weights: the ops reading them are counted into the manifest.
_CONVERTED_DTYPES = {"int8": (onnx.TensorProto.INT8, onnx.TensorProto.UINT8), "fp16": (onnx.TensorProto.FLOAT16,)}
# Ops with weights the dynamic quantizer handles: every MatMul, embedding lookups, LSTMs.
INT8_OP_TYPES = ("MatMul", "Gather", "LSTM")
# The int8 forms `bench/step_time.py --compare` measured (docs/benchmarks.md). The default is the
# batch-invariant one (per-row activation scales): 10-20% slower than the per-call forms here, in
# exchange for tokens that never depend on batch-mates, and closer to float32.
INT8_FORMS = ("qint8-per-row", "qint8-per-tensor", "qint8-per-channel", "quint8-per-tensor", "matmulnbits-8bit")
DEFAULT_INT8_FORM = "qint8-per-row"
# Per-row form: weights int8, symmetric in [-127, 127] with one scale per column; activations 7-bit
# per row, symmetric in [-63, 63] around a uint8 zero point of 64 (u8s8, the fast x86 kernel).
# Why 7 bits for activations: ONNX Runtime's u8s8 kernels on AVX2 without VNNI add pairs of
# uint8 x int8 products in int16 (vpmaddubsw), which saturates once 2 x a x |w| passes 32767; with
# a <= 127 it never does, on any CPU. The alternatives measured (docs/benchmarks.md): 7-bit
# weights cost the tourism forecaster 2% MASE; 8-bit both ways as u8u8 is closer to float32 but
# 7-10% slower here.
PER_ROW_WEIGHT_MAX = 127
PER_ROW_ACTIVATION_MAX = 63
PER_ROW_ZERO_POINT = 64
# Blocked QuantizeLinear (one block per row) is opset 21. Bundles exported before attention
# became one node are opset 18; the ops whose definitions changed between 18 and 21 only gained
# types, so such a graph means the same. Later exports are opset 23 and stay so.
PER_ROW_OPSET = 21
# Kept in float32 in fp16 graphs: normalisation and softmax sum many terms, and float16's
# 10-bit mantissa loses small differences in them. Attention holds its softmax inside.
FP32_OPS_IN_FP16 = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf", "Attention")
FP16_METHOD = (
    "onnxruntime.transformers.float16.convert_float_to_float16, keep_io_types=True; "
    f"{', '.join(FP32_OPS_IN_FP16)} kept in float32"
)


@dataclass(frozen=True)
class GraphConversion:
    """What converting one graph did: the ops that read converted weights, by type; the MatMuls
    with a weight before conversion; the Cast and Transpose nodes folded into weights."""

    quantized_ops: dict[str, int]
    weight_matmuls: int
    folded: int


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def _folded_value(node: onnx.NodeProto, source: np.ndarray, transposes: bool) -> np.ndarray | None:
    """The value of a Cast-to-float or Transpose of a constant; None for any other node."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Cast" and attrs.get("to") == onnx.TensorProto.FLOAT and source.dtype == np.float16:
        return source.astype(np.float32)
    if node.op_type == "Transpose" and transposes:
        return np.ascontiguousarray(np.transpose(source, attrs.get("perm")))
    return None


def fold_weights(model: onnx.ModelProto, transposes: bool = True) -> int:
    """Replaces Cast(float16 initializer) and, with `transposes`, Transpose(initializer) by
    float32 initializers, in place; returns how many nodes were folded. Chains (a Transpose of a
    Cast) fold in one pass because nodes are in topological order.

    A folded Transpose of a shared weight (the tied embedding: the lookup reads the table, the
    output projection its transpose) leaves two tensors where there was one."""
    graph = model.graph
    inits = _initializers(graph)
    outputs = {o.name for o in graph.output}
    kept, folded = [], 0
    for node in graph.node:
        source = inits.get(node.input[0]) if node.input else None
        value = None
        foldable = node.op_type in ("Cast", "Transpose") and len(node.output) == 1 and node.output[0] not in outputs
        if source is not None and foldable:
            value = _folded_value(node, numpy_helper.to_array(source), transposes)
        if value is None:
            kept.append(node)
            continue
        inits[node.output[0]] = numpy_helper.from_array(value, node.output[0])
        folded += 1
    used = {name for node in kept for name in node.input} | outputs
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(init for name, init in inits.items() if name in used)
    return folded


def weight_matmuls(model: onnx.ModelProto) -> int:
    """MatMul and Gemm nodes whose weight (second input) is an initializer."""
    inits = _initializers(model.graph)
    return sum(1 for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits)


def _weight_matmuls_when_folded(model: onnx.ModelProto) -> int:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    fold_weights(probe)
    return weight_matmuls(probe)


# Ops that compute with weights (MatMuls in every form, embedding lookups, recurrent cells).
_WEIGHT_OPS = {"MatMul", "Gemm", "MatMulInteger", "MatMulNBits", "Gather", "LSTM", "DynamicQuantizeLSTM", "GRU"}


def ops_reading(model: onnx.ModelProto, dtypes: Iterable[int]) -> dict[str, int]:
    """Weight ops by type that read an initializer of one of `dtypes` (int8: MatMulInteger, a
    quantized embedding's Gather, ...; fp16: MatMul, Gather)."""
    wanted = {init.name for init in model.graph.initializer if init.data_type in set(dtypes)}
    nodes = (n for n in model.graph.node if n.op_type in _WEIGHT_OPS and wanted.intersection(n.input))
    return dict(sorted(Counter(n.op_type for n in nodes).items()))


class _OnlyOurs(logging.Filter):
    """ONNX Runtime's quantizer and optimizer log a line per tensor or fusion (on the root logger
    and their own); while they run, only our records and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("seqcast") or record.levelno >= logging.ERROR


@contextmanager
def _quiet_onnxruntime_tools() -> Iterator[None]:
    quiet, root = _OnlyOurs(), logging.getLogger()
    targets = [root, *root.handlers]
    for target in targets:
        target.addFilter(quiet)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(quiet)


def _scalar(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def _quantize_rows(x: str, k: int, prefix: str, zero_point: str) -> tuple[list[onnx.NodeProto], str, str]:
    """Nodes that quantize activations `x` (..., k) per row: scale = max |x| / 63 over the last
    axis, q = round(x / scale) + 64 as uint8, with `zero_point` (..., 1) of 64s. Returns the
    nodes, q's name and the scale's name (..., 1). A row of zeros gets scale 0: its quantized
    values are then undefined, but they are multiplied by that scale, so the product is still 0."""
    abs_, max_, scale, q = (f"{prefix}/{n}" for n in ("abs", "max", "scale", "q"))
    nodes = [
        onnx.helper.make_node("Abs", [x], [abs_]),
        onnx.helper.make_node("ReduceMax", [abs_, "per_row/last_axis"], [max_], keepdims=1),
        onnx.helper.make_node("Mul", [max_, "per_row/inverse_activation_max"], [scale]),
        onnx.helper.make_node("QuantizeLinear", [x, scale, zero_point], [q], axis=-1, block_size=k),
    ]
    return nodes, q, scale


def _zero_points(scale: str, name: str) -> list[onnx.NodeProto]:
    """Blocked QuantizeLinear wants its zero point shaped like its scale: (..., 1) of PER_ROW_ZERO_POINT."""
    return [
        onnx.helper.make_node("Shape", [scale], [f"{name}/shape"]),
        onnx.helper.make_node("ConstantOfShape", [f"{name}/shape"], [name],
                              value=numpy_helper.from_array(np.array([PER_ROW_ZERO_POINT], np.uint8))),
    ]


def _leading_axes(model: onnx.ModelProto) -> dict[str, tuple[str | int, ...]]:
    """The leading axes (all but the last) of every tensor whose shape ONNX shape inference
    resolves, e.g. ("batch", "new_tokens"). Activations with the same leading axes share one
    zero-point tensor; one whose shape is not resolved gets its own."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    axes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims and all(dims):
            axes[value.name] = tuple(dims[:-1])
    return axes


def _quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights in [-PER_ROW_WEIGHT_MAX, PER_ROW_WEIGHT_MAX] and their float32 scale per column."""
    scale = np.maximum(np.abs(weight).max(axis=0), np.finfo(np.float32).tiny) / PER_ROW_WEIGHT_MAX
    quantized = np.clip(np.round(weight / scale), -PER_ROW_WEIGHT_MAX, PER_ROW_WEIGHT_MAX)
    return quantized.astype(np.int8), scale.astype(np.float32)


def _bias_apart(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto], products: set[str]) -> None:
    """Writes each bias Add after a rewritten MatMul as Sum(product, bias), the same sum.

    ONNX Runtime (1.31) fuses MatMulInteger -> Cast -> Mul into MatMulIntegerToFloat, and with it
    a following Add of a constant; its kernel then adds that bias before scaling by a non-scalar
    (per-row) A scale, so the bias comes out multiplied by the row's scale. A Sum is not fused:
    the bias is added after the scaling, as written."""
    for node in nodes:
        if node.op_type == "Add" and products.intersection(node.input) and inits.keys() & set(node.input):
            node.op_type = "Sum"


def per_row_matmuls(model: onnx.ModelProto) -> int:
    """Rewrites, in place, every MatMul (and plain Gemm) whose weight is a 2-D float32 initializer as
    MatMulInteger(quantized rows of x, int8 weight) -> float32 -> x (row scale x column scale);
    returns how many. MatMuls that share an input share its quantization (Q, K and V). Those
    without an initializer weight (attention's Q.K and weights.V) stay float32.

    Shapes: x (..., K) with any leading axes, weight (K, N), result (..., N) as before."""
    graph = model.graph
    inits = _initializers(graph)
    leading = _leading_axes(model)
    nodes: list[onnx.NodeProto] = []
    rows: dict[str, tuple[str, str]] = {}  # activation -> (quantized, scale)
    zero_points: dict[object, str] = {}  # leading axes (or the activation itself) -> zero-point tensor
    added = [
        _scalar("per_row/last_axis", np.array([-1], np.int64)),
        _scalar("per_row/inverse_activation_max", np.array(1 / PER_ROW_ACTIVATION_MAX, np.float32)),
        _scalar("per_row/zero_point", np.array(PER_ROW_ZERO_POINT, np.uint8)),
    ]
    rewritten: set[str] = set()  # outputs of the MatMuls rewritten
    for node in graph.node:
        weight = weight_of(node, inits)
        if weight is None:
            nodes.append(node)
            continue
        x, out = node.input[0], node.output[0]
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        if bias is not None:  # a Gemm's C, added after the product
            out = f"{node.output[0]}/product"
        if x not in rows:
            prefix, key = f"per_row/{len(rows)}", leading.get(x, x)
            quantize, q, scale = _quantize_rows(x, weight.shape[0], prefix, zero_points.get(key, f"{prefix}/zero_point"))
            if key not in zero_points:
                zero_points[key] = f"{prefix}/zero_point"
                quantize[3:3] = _zero_points(scale, zero_points[key])
            nodes.extend(quantize)
            rows[x] = q, scale
        q, scale = rows[x]
        w, w_scale = _quantize_columns(weight)
        added += [_scalar(f"{out}/weight_int8", w), _scalar(f"{out}/weight_scale", w_scale)]
        # ONNX Runtime fuses these four into one MatMulIntegerToFloat (and not a bias after them: `_bias_apart`).
        nodes += [
            onnx.helper.make_node("MatMulInteger", [q, f"{out}/weight_int8", "per_row/zero_point"],
                                  [f"{out}/int32"]),
            onnx.helper.make_node("Cast", [f"{out}/int32"], [f"{out}/float"], to=onnx.TensorProto.FLOAT),
            onnx.helper.make_node("Mul", [scale, f"{out}/weight_scale"], [f"{out}/scale"]),
            onnx.helper.make_node("Mul", [f"{out}/float", f"{out}/scale"], [out]),
        ]
        if bias is not None:
            nodes.append(onnx.helper.make_node("Add", [out, bias], [node.output[0]]))
        rewritten.add(out)
    _bias_apart(nodes, inits, rewritten)
    used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    kept = [init for init in graph.initializer if init.name in used] + [init for init in added if init.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if rewritten:
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, PER_ROW_OPSET)
    return len(rewritten)


def int8_method(form: str) -> str:
    """The manifest's description of how an int8 form was made."""
    if form == "qint8-per-row":
        return (f"seqcast per-row dynamic quantization: MatMul (output projection included) as MatMulInteger with int8 "
                f"weights in [-{PER_ROW_WEIGHT_MAX}, {PER_ROW_WEIGHT_MAX}] scaled per column and activations in "
                f"[-{PER_ROW_ACTIVATION_MAX}, {PER_ROW_ACTIVATION_MAX}] scaled per row (blocked QuantizeLinear; a row's numbers do not depend on its batch-mates); "
                "attention key biases dropped and value biases folded into the output projection (seqcast.export.biases); "
                "onnxruntime.quantization.quantize_dynamic for Gather (embeddings, QInt8 per tensor); LSTM cells float32")
    if form == "matmulnbits-8bit":
        return ("onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer: 8-bit weights in blocks of "
                f"{NBITS_BLOCK}, symmetric, accuracy_level 4 (int8 activations); MatMul (output projection included)")
    weights, _, granularity = form.partition("-")
    return (f"onnxruntime.quantization.quantize_dynamic: {weights.replace('q', 'Q').replace('int', 'Int')} weights "
            f"{granularity.replace('-', ' ')}, activations quantized per call; MatMul (output projection included), "
            "Gather (embeddings), LSTM")


NBITS_BLOCK = 128


def _quantize_nbits(model: onnx.ModelProto, dst: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=NBITS_BLOCK, is_symmetric=True, bits=8, accuracy_level=4)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), False)


def _quantize_int8(folded: Path, dst: Path, form: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if form not in INT8_FORMS:
        raise ValueError(f"unknown int8 form {form!r}; known: {INT8_FORMS}")
    with _quiet_onnxruntime_tools():
        if form == "matmulnbits-8bit":
            _quantize_nbits(onnx.load(str(folded)), dst)
            return
        if form == "qint8-per-row":
            model = onnx.load(str(folded))
            moved = move_biases(model)
            log.info("biases moved: %s", dict(moved) or "none")
            per_row_matmuls(model)
            onnx.save_model(model, str(folded))
        quantize_dynamic(
            folded,
            dst,
            # Per row: the MatMuls are done; the embedding lookups' fixed scales do not depend on the batch.
            op_types_to_quantize=["Gather"] if form == "qint8-per-row" else list(INT8_OP_TYPES),
            per_channel=form.endswith("per-channel"),
            weight_type=QuantType.QInt8 if form.startswith("qint8") else QuantType.QUInt8,
            # Weights only: attention's activation-by-activation MatMuls (Q.K, weights.V) stay float32.
            # Fused ops (com.microsoft) have no ONNX type inference; their outputs are float32.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP32_OPS_IN_FP16)))
    converted.topological_sort()  # the converter appends the Casts of kept float32 inputs at the end
    return converted.model


def fuse_transformer(model: onnx.ModelProto, heads: int, d_model: int) -> onnx.ModelProto:
    """ONNX Runtime's transformer optimizer (BART fusions): residual Add + LayerNormalization into
    SkipLayerNormalization, bias + Gelu into BiasGelu. Its attention fusions do not match our
    graphs' explicit KV-cache attention, so attention stays as exported."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet_onnxruntime_tools():
        optimized = optimize_model(model, model_type="bart", num_heads=heads, hidden_size=d_model, opt_level=0, use_gpu=False)
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    log.info("fused: %s", fused)
    model = optimized.model
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model


def convert_graph(
    src: Path, dst: Path, precision: Precision, int8_form: str = DEFAULT_INT8_FORM, fuse: tuple[int, int] | None = None
) -> GraphConversion:
    """Writes `src` converted to `precision` at `dst` (float32 tensors in and out either way).

    `fuse` = (heads, d_model) runs `fuse_transformer` first (for measuring it; off by default).
    """
    model = onnx.load(str(src))
    # fp16 needs no folded Transpose: the converter turns the table itself into float16, and
    # ONNX Runtime folds the Transpose at load; folding it would store the embedding twice.
    folded = fold_weights(model, transposes=precision != "fp16")
    matmuls = weight_matmuls(model) if precision != "fp16" else _weight_matmuls_when_folded(model)
    if fuse is not None:
        model = fuse_transformer(model, *fuse)
    if precision == "int8":
        staged = dst.with_name(dst.name + ".folded")
        onnx.save_model(model, str(staged))
        try:
            _quantize_int8(staged, dst, int8_form)
        finally:
            staged.unlink(missing_ok=True)
        model = onnx.load(str(dst))
    elif precision == "fp16":
        model = _convert_fp16(model)
        onnx.save_model(model, str(dst))
    else:
        onnx.save_model(model, str(dst))
    onnx.checker.check_model(str(dst))
    result = GraphConversion(ops_reading(model, _CONVERTED_DTYPES.get(precision, ())), matmuls, folded)
    log.info(
        "%s -> %s (%s): %d weight MatMuls, %d Cast/Transpose folded, quantized ops %s, %.1f MB",
        src, dst, precision, matmuls, folded, result.quantized_ops or "none", dst.stat().st_size / 1e6,
    )
    return result
