"""Precision variants of one ONNX graph: int8 weights for CPU, float16 for CUDA.

Builds on `onnx` graph edits and ONNX Runtime's own tooling: `onnxruntime.quantization` for int8
and `onnxruntime.transformers.float16` for fp16.

Exported graphs store large weights as float16 initializers behind a Cast to float32 (see
`onnx_export`), and the tied output projection reads the embedding through a Transpose. A
quantizer only quantizes a MatMul whose weight *is* an initializer, so on those graphs it finds
nothing to do. `fold_weights` first turns every Cast or Transpose of an initializer into a
float32 initializer of its own; after that every weight MatMul, the output projection included,
is visible to the quantizer.

The int8 form kept is the one `bench/step_time.py --compare` measured fastest on the en-de
decoder step (see docs/benchmarks.md): dynamic quantization with one int8 scale per weight
tensor. Activations are quantized per call (DynamicQuantizeLinear), so no calibration data is
needed and the graph takes and returns float32 tensors as before. The embedding Gathers are
quantized too (int8 table, DequantizeLinear after the lookup), which is where most of the size
goes. Transformer graphs can first go through ONNX Runtime's transformer optimizer
(`fuse_transformer`); `precision.quantize_bundle` does so for int8 transformers, where it
measured faster. The other forms measured stay selectable (`INT8_FORMS`) to repeat the
comparison.
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

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "fp16")

# Storage types of converted weights: the ops reading them are counted into the manifest.
_CONVERTED_DTYPES = {"int8": (onnx.TensorProto.INT8, onnx.TensorProto.UINT8), "fp16": (onnx.TensorProto.FLOAT16,)}
# Ops with weights the dynamic quantizer handles: every MatMul, embedding lookups, LSTMs.
INT8_OP_TYPES = ("MatMul", "Gather", "LSTM")
# The int8 forms `bench/step_time.py --compare` measured (docs/benchmarks.md); the default is the
# fastest on the en-de decoder step whose quality passed the guard.
INT8_FORMS = ("qint8-per-tensor", "qint8-per-channel", "quint8-per-tensor", "matmulnbits-8bit")
DEFAULT_INT8_FORM = "qint8-per-tensor"
# Kept in float32 in fp16 graphs: normalisation and softmax sum many terms, and float16's
# 10-bit mantissa loses small differences in them.
FP32_OPS_IN_FP16 = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf")
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


def int8_method(form: str) -> str:
    """The manifest's description of how an int8 form was made."""
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
        quantize_dynamic(
            folded,
            dst,
            op_types_to_quantize=list(INT8_OP_TYPES),
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
