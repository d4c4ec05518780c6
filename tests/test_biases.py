"""Bias rewrites of int8 graphs (`seqcast.export.biases`): fewer nodes, the same numbers."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from seqcast.bundle.decoding import greedy_decode
from seqcast.bundle.loading import open_bundle
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.export.biases import move_biases
from seqcast.export.quantize import fold_weights

D, HEADS = 8, 2


def _block(softcap: float = 0.0, read_twice: bool = False) -> onnx.ModelProto:
    """A post-norm self-attention block with a KV cache: x -> Q, K, V (each with a bias) ->
    Attention -> output projection (with a bias) -> + x -> LayerNormalization; with `read_twice`,
    the attention's output is a graph output as well."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name) for name, shape in [
        ("wq", (D, D)), ("wk", (D, D)), ("wv", (D, D)), ("wo", (D, D)),
        ("bq", (D,)), ("bk", (D,)), ("bv", (D,)), ("bo", (D,)), ("gamma", (D,)), ("beta", (D,))]]
    nodes = []
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}0"]), helper.make_node("Add", [f"{p}0", f"b{p}"], [p])]
    attention = helper.make_node("Attention", ["q", "k", "v", "", "past_key", "past_value"],
                                 ["attended", "present_key", "present_value"], q_num_heads=HEADS, kv_num_heads=HEADS)
    if softcap:
        attention.attribute.append(helper.make_attribute("softcap", softcap))
    nodes += [attention, helper.make_node("MatMul", ["attended", "wo"], ["o0"]), helper.make_node("Add", ["o0", "bo"], ["o"]),
              helper.make_node("Add", ["x", "o"], ["sum"]),
              helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1)]
    past, total, hidden = ["batch", HEADS, "past", D // HEADS], ["batch", HEADS, "total", D // HEADS], ["batch", "new", D]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
               for name, shape in [("y", hidden), ("present_key", total), ("present_value", total)]]
    if read_twice:
        outputs.append(helper.make_tensor_value_info("attended", TensorProto.FLOAT, hidden))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, hidden),
                                               helper.make_tensor_value_info("past_key", TensorProto.FLOAT, past),
                                               helper.make_tensor_value_info("past_value", TensorProto.FLOAT, past)],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def _steps(model: onnx.ModelProto, steps: int = 4) -> list[np.ndarray]:
    """Block outputs of `steps` decoding steps of 2 rows, each step's caches fed to the next."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    key = value = np.zeros((2, HEADS, 0, D // HEADS), np.float32)
    outputs = []
    for _ in range(steps):
        y, key, value = session.run(["y", "present_key", "present_value"],
                                    {"x": rng.normal(size=(2, 1, D)).astype(np.float32), "past_key": key, "past_value": value})
        outputs.append(y)
    return outputs


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def test_moved_biases_leave_a_post_norm_attention_block_computing_the_same() -> None:
    block = _block()
    moved = onnx.ModelProto()
    moved.CopyFrom(block)
    done = move_biases(moved)
    onnx.checker.check_model(moved, full_check=True)
    assert done == {"key bias dropped": 1, "value bias folded into the output projection": 1}
    # Q's bias stays; K's and V's are gone.
    assert _ops(block)["Add"] - _ops(moved)["Add"] == 2
    for before, after in zip(_steps(block), _steps(moved)):
        np.testing.assert_allclose(after, before, atol=1e-5)


def test_a_softcapped_attention_and_an_attention_output_read_twice_keep_their_biases() -> None:
    softcapped = _block(softcap=5.0)
    assert move_biases(softcapped) == {}
    read_twice = _block(read_twice=True)  # the attention's output is a graph output too
    assert move_biases(read_twice) == {"key bias dropped": 1}


def test_an_exported_transformer_decodes_the_same_logits_with_its_biases_moved(model_dir: Path, tmp_path: Path) -> None:
    """The tiny transformer's own graphs (pre-norm, one Attention node per block), float32."""
    src = model_dir / "tiny-transformer" / "1"
    moved_dir = tmp_path / "moved"
    shutil.copytree(src, moved_dir)
    counts: Counter[str] = Counter()
    for graph in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(moved_dir / graph))
        fold_weights(model)  # as the quantizer does first: float32 weights the rewrites can read
        counts += move_biases(model)
        onnx.save(model, str(moved_dir / graph))
    # Two layers each side: every self-attention's key and value biases; the cross-attention's
    # keys and values come from the encoder's outputs and keep theirs.
    assert counts["key bias dropped"] == 4 and counts["value bias folded into the output projection"] == 4

    bundle = open_bundle(src, RuntimeOptions(device="cpu"))
    manifest = bundle.manifest
    runtimes = [bundle.runtime, OnnxModel.from_manifest(moved_dir, manifest, RuntimeOptions(device="cpu"))]
    sources = bundle.codec.encode(["Good morning.", "The house is very old and small.", "Yes."])
    logits: list[list[np.ndarray]] = [[], []]
    tokens: list[list[tuple[int, object]]] = [[], []]
    for i, runtime in enumerate(runtimes):
        step = runtime.step

        def recording(feeds: dict, step=step, seen=logits[i]) -> dict:
            out = step(feeds)
            seen.append(out[manifest.decoder.output])
            return out

        runtime.step = recording
        greedy_decode(runtime, manifest.special_tokens, sources, [12] * len(sources),
                      lambda row, token, finish, seen=tokens[i]: seen.append((row, token)), min_new_tokens=12)
    assert tokens[0] == tokens[1]
    assert len(logits[0]) == len(logits[1]) == 12
    for before, after in zip(*logits):
        np.testing.assert_allclose(after, before, atol=1e-4)
