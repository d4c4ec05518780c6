"""Self-attention with a growing KV cache: a new cache every step against one written in place.

Every exported decoder writes self-attention as ONNX's `Attention` op (opset 23) with past and
present keys and values: each step ONNX Runtime allocates the present cache, one slot longer,
and copies the past into it. ONNX Runtime's `GroupQueryAttention` (com.microsoft) can instead
append the new keys and values into a preallocated buffer that is both its past and its present
input and output (bound to one OrtValue). This script times one attention node of each kind on
the same random queries, keys and values (d_model 256, 4 heads, one new token per row), single
calls alternated in one process, and checks that both give the same output.

    python bench/cache_in_place.py --batch 1 16 --past 30 60 100 --calls 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from seqcast.bundle.runtime import RuntimeOptions, session_options

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import alternate  # noqa: E402

HEADS, HEAD_SIZE = 4, 64
WIDTH = HEADS * HEAD_SIZE


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), session_options(RuntimeOptions(device="cpu")), providers=["CPUExecutionProvider"])


def _inputs(batch: int, cache: str | int) -> list[onnx.ValueInfoProto]:
    tokens = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, 1, WIDTH]) for n in ("q", "k", "v")]
    return tokens + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, HEADS, cache, HEAD_SIZE]) for n in ("past_key", "past_value")]


def _outputs() -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "present_key", "present_value")]


def attention_with_concat(batch: int) -> ort.InferenceSession:
    """ONNX Attention: present = past + the new slot, a new tensor each call."""
    node = helper.make_node("Attention", ["q", "k", "v", "", "past_key", "past_value"], ["y", "present_key", "present_value"],
                            q_num_heads=HEADS, kv_num_heads=HEADS)
    graph = helper.make_graph([node], "concat", _inputs(batch, "past"), _outputs())
    return _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10))


def attention_in_place(batch: int, capacity: int) -> ort.InferenceSession:
    """GroupQueryAttention over a (batch, heads, capacity, head size) buffer; row i's keys are its
    first seqlens_k[i] + 1 slots."""
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total_sequence_length"],
                            ["y", "present_key", "present_value"], domain="com.microsoft", num_heads=HEADS, kv_num_heads=HEADS)
    lengths = [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [batch]),
               helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [1])]
    graph = helper.make_graph([node], "in_place", _inputs(batch, capacity) + lengths, _outputs())
    opsets = [helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1)]
    return _session(helper.make_model(graph, opset_imports=opsets, ir_version=10))


def measure(batch: int, past: int, calls: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(ms with concat, ms in place, median ratio in place / concat, max |difference|)."""
    q, k, v = (rng.standard_normal((batch, 1, WIDTH)).astype(np.float32) for _ in range(3))
    past_key, past_value = (rng.standard_normal((batch, HEADS, past, HEAD_SIZE)).astype(np.float32) for _ in range(2))
    concat = attention_with_concat(batch)
    feeds = {"q": q, "k": k, "v": v, "past_key": past_key, "past_value": past_value}

    capacity = past + 1
    buffers = []
    for cached in (past_key, past_value):
        buffer = np.zeros((batch, HEADS, capacity, HEAD_SIZE), np.float32)
        buffer[:, :, :past] = cached
        buffers.append(ort.OrtValue.ortvalue_from_numpy(buffer))
    in_place = attention_in_place(batch, capacity)
    binding = in_place.io_binding()
    for name, value in (("q", q), ("k", k), ("v", v), ("seqlens_k", np.full(batch, past, np.int32)),
                        ("total_sequence_length", np.array([past + 1], np.int32))):
        binding.bind_cpu_input(name, value)
    for name, buffer in zip(("key", "value"), buffers):
        binding.bind_ortvalue_input(f"past_{name}", buffer)
        binding.bind_ortvalue_output(f"present_{name}", buffer)
    binding.bind_output("y", "cpu")

    expected = concat.run(["y"], feeds)[0]
    in_place.run_with_iobinding(binding)  # writes the new slot at position `past`; every call rewrites it
    difference = float(np.abs(binding.get_outputs()[2].numpy() - expected).max())
    return (*alternate(calls, lambda: concat.run(None, feeds), lambda: in_place.run_with_iobinding(binding)), difference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--past", type=int, nargs="+", default=[30, 60, 100], help="cached tokens per row")
    parser.add_argument("--calls", type=int, default=2000, help="calls of each kind per cell, alternated")
    args = parser.parse_args()
    print(f"one self-attention node, d_model {WIDTH}, {HEADS} heads, 1 new token per row, 1 thread; {args.calls} calls of each, "
          f"alternated; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}\n")
    print("| batch | past | Attention, new cache: ms | GroupQueryAttention, in place: ms | in place / new (median ratio) | max abs difference |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for batch in args.batch:
        for past in args.past:
            concat, in_place, ratio, difference = measure(batch, past, args.calls, rng)
            print(f"| {batch} | {past} | {concat:.4f} | {in_place:.4f} | {ratio:.2f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
