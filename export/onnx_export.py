"""Writing encoder.onnx and decoder.onnx from the export wrappers.

Graphs come from the `torch.export`-based exporter with every axis the manifest calls symbolic
marked dynamic. Example inputs use sizes of at least 2 on every dynamic axis: the exporter
specialises axes it sees at size 0 or 1.

Weights: large float tensors are stored as float16 with a Cast back to float32 in front, which
ONNX Runtime folds away at load. Compute stays float32; the bundle is half the size. The
PyTorch model is rounded the same way before export (`round_weights_fp16`), so parity is
measured between the same numbers.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from seqcast.bundle.manifest import TensorSpec
from seqcast.export.graphs import GraphPair, sample_inputs

log = logging.getLogger(__name__)

OPSET = 23
# Tensors with fewer elements (biases, layer norms) stay float32.
FP16_MIN_ELEMENTS = 1024
# Example size per symbolic axis name.
_EXAMPLE_SIZES = {"batch": 3, "source_length": 5, "new_tokens": 2, "past_length": 4, "past_and_new": 6}


def round_weights_fp16(model: nn.Module) -> None:
    """Rounds large float parameters to float16 precision in place (stored as float32)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype == torch.float32 and p.numel() >= FP16_MIN_ELEMENTS:
                p.copy_(p.half().float())


def example_inputs(specs: list[TensorSpec], vocab_size: int) -> tuple[torch.Tensor, ...]:
    """Tracing inputs matching `specs`, every symbolic axis at its example size (>= 2)."""
    feeds = sample_inputs(specs, _EXAMPLE_SIZES, vocab_size, np.random.default_rng(0))
    return tuple(torch.from_numpy(feeds[s.name]) for s in specs)


def _dynamic_shapes(module: nn.Module, specs: list[TensorSpec]) -> tuple[object, ...]:
    """One entry per forward parameter; a trailing *args parameter gets one tuple for the rest."""
    # Dim.DYNAMIC lets the exporter work out which axes are equal (or sums, like past + new).
    shapes = [{a: torch.export.Dim.DYNAMIC for a, d in enumerate(s.shape) if isinstance(d, str)} for s in specs]
    params = list(inspect.signature(module.forward).parameters.values())
    if params and params[-1].kind is inspect.Parameter.VAR_POSITIONAL:
        fixed = len(params) - 1
        return (*shapes[:fixed], tuple(shapes[fixed:]))
    return tuple(shapes)


def _store_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if init.data_type == TensorProto.FLOAT and array.size >= FP16_MIN_ELEMENTS:
            half = numpy_helper.from_array(array.astype(np.float16), f"{init.name}__fp16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast"))
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return model


def _inferred_output_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Output sizes by ONNX shape inference from the symbolic inputs alone: int if fixed, else None."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    for out in probe.graph.output:
        out.type.tensor_type.ClearField("shape")
    probe = onnx.shape_inference.infer_shapes(probe)
    return {
        out.name: [d.dim_value if d.HasField("dim_value") else None for d in out.type.tensor_type.shape.dim]
        for out in probe.graph.output
    }


def _name_axes(model: onnx.ModelProto, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Names the symbolic axes of graph inputs and outputs as the manifest does.

    The exporter annotates some outputs with the example's sizes where the computation is
    dynamic (seen with GRU layers: source length fixed to the example's 5). Such an axis is
    freed only when shape inference from the inputs agrees it is not fixed; an axis that really
    is fixed stays a number, and the load-time check then rejects the graph.
    """
    inferred = _inferred_output_dims(model)
    del model.graph.value_info[:]  # stale intermediate annotations; ONNX Runtime infers its own
    for values, specs in ((model.graph.input, inputs), (model.graph.output, outputs)):
        by_name = {s.name: s for s in specs}
        for value in values:
            spec = by_name.get(value.name)
            if spec is None:
                continue
            for axis, (dim, want) in enumerate(zip(value.type.tensor_type.shape.dim, spec.shape)):
                if not isinstance(want, str):
                    continue
                # Missing when inference leaves the rank unknown, and 0 where it cannot size the
                # probabilities of ONNX Attention: neither fixes an axis.
                known = inferred.get(value.name, [])
                fixed_by_inference = axis < len(known) and bool(known[axis])
                if not dim.HasField("dim_value") or (values is model.graph.output and not fixed_by_inference):
                    dim.dim_param = want


def export_graph(
    module: nn.Module,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    path: Path,
    vocab_size: int,
    weights_fp16: bool = True,
) -> None:
    """Exports one wrapper to `path` with manifest axis names and, if asked, float16-stored weights."""
    module.eval()
    args = example_inputs(inputs, vocab_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_shapes=_dynamic_shapes(module, inputs),
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    _name_axes(model, inputs, outputs)
    if weights_fp16:
        model = _store_fp16(model)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)


def export_pair(graphs: GraphPair, out_dir: Path, vocab_size: int, weights_fp16: bool = True) -> None:
    """Writes encoder.onnx and decoder.onnx for `graphs` into out_dir."""
    for module, spec in ((graphs.encoder, graphs.encoder_spec), (graphs.decoder, graphs.decoder_spec)):
        export_graph(module, spec.inputs, spec.outputs, out_dir / spec.file, vocab_size, weights_fp16)
