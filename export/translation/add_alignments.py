"""Adding the `alignments` output to an existing transformer bundle by editing its decoder graph.

For bundles exported before the decoder wrappers returned alignments, and whose checkpoint is
gone (the committed `models/en-de/1`): the chosen decoder layer's cross-attention Softmax is
found by the name scope the exporter recorded on it (`model.decoder_layers.{i}.cross_attn`),
its probabilities (B, H, T, S) are averaged over heads by a ReduceMean into a new graph output
`alignments` (B, T, S), and the manifest gains the output, `alignment_layer` and new checksums.
Nothing else in the graph changes; the edit checks that on sample inputs every other output is
bit-identical before the bundle is rewritten.

Run: `python -m seqcast.export.translation.add_alignments models/en-de/1`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from seqcast.bundle.manifest import Manifest
from seqcast.export.graphs import ALIGNMENTS, default_alignment_layer, sample_inputs
from seqcast.export.writing import checksums

log = logging.getLogger(__name__)

_SCOPES = "pkg.torch.onnx.name_scopes"


def cross_attention_softmax(model: onnx.ModelProto, layer: int) -> onnx.NodeProto:
    """The Softmax node of decoder layer `layer`'s cross-attention."""
    scope = f"model.decoder_layers.{layer}.cross_attn"
    found = [n for n in model.graph.node if n.op_type == "Softmax"
             and any(p.key == _SCOPES and f"'{scope}'" in p.value for p in n.metadata_props)]
    if len(found) != 1:
        raise ValueError(f"expected one cross-attention Softmax under {scope}, found {len(found)}")
    return found[0]


def add_output(model: onnx.ModelProto, layer: int) -> onnx.ModelProto:
    """A copy of `model` with `alignments` = mean over heads of layer `layer`'s cross-attention."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    probs = cross_attention_softmax(edited, layer).output[0]
    axes = helper.make_tensor("alignments_axes", TensorProto.INT64, [1], [1])
    edited.graph.initializer.append(axes)
    edited.graph.node.append(helper.make_node("ReduceMean", [probs, axes.name], [ALIGNMENTS.name], keepdims=0, name="alignments_head_mean"))
    edited.graph.output.append(helper.make_tensor_value_info(ALIGNMENTS.name, TensorProto.FLOAT, ALIGNMENTS.shape))
    onnx.checker.check_model(edited)
    return edited


def remove_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of `model` without graph output `name` and the nodes and initializers that only fed it."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    graph = pruned.graph
    keep = [o for o in graph.output if o.name != name]
    del graph.output[:]
    graph.output.extend(keep)
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return pruned


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def add_alignments(bundle_dir: Path, layer: int | None = None) -> Manifest:
    """Adds the output to bundle_dir's decoder.onnx and manifest; returns the new manifest."""
    manifest = Manifest.read(bundle_dir)
    if manifest.decoder.alignments is not None:
        raise ValueError(f"{bundle_dir} already has decoder alignments ({manifest.decoder.alignments})")
    layer = default_alignment_layer(manifest.dims["decoder_layers"]) if layer is None else layer
    path = bundle_dir / manifest.decoder.file
    edited = add_output(onnx.load(str(path)), layer)
    before_path = path.with_suffix(".before.onnx")
    path.rename(before_path)
    try:
        onnx.save_model(edited, str(path))
        sizes = {"batch": 3, "source_length": 7, "new_tokens": 1, "past_length": 5, "past_and_new": 6}
        feeds = sample_inputs(manifest.decoder.inputs, sizes, manifest.dims["vocab_size"], np.random.default_rng(0))
        before, after = _outputs(before_path, feeds), _outputs(path, feeds)
        for name, value in before.items():
            if not np.array_equal(value, after[name]):
                raise ValueError(f"editing changed output {name}")
        rows = after[ALIGNMENTS.name]
        mask = feeds["encoder_attention_mask"][:, None, :]
        if not (np.allclose(rows.sum(-1), 1.0, atol=1e-5) and (rows[np.broadcast_to(mask == 0, rows.shape)] == 0).all()):
            raise ValueError("alignments rows must sum to 1 over the source and be 0 on padding")
    except BaseException:
        path.unlink(missing_ok=True)
        before_path.rename(path)
        raise
    before_path.unlink()
    decoder = manifest.decoder.model_copy(update={"outputs": [*manifest.decoder.outputs, ALIGNMENTS], "alignments": ALIGNMENTS.name})
    updated = Manifest.model_validate({**manifest.model_dump(), "decoder": decoder.model_dump(), "alignment_layer": layer,
                                       "files": checksums(bundle_dir)})
    updated.write(bundle_dir)
    log.info("added alignments (decoder layer %d) to %s; other outputs unchanged", layer, bundle_dir)
    return updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="add the alignments output to a transformer bundle's decoder")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--layer", type=int, help="decoder layer (default: the penultimate)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    add_alignments(args.bundle, args.layer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
