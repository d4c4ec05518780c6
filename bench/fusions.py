"""ONNX Runtime's SkipLayerNormalization fusion on CPU: the kernel alone, and whole decoder steps.

ONNX Runtime fuses a residual Add and the LayerNormalization after it into one
SkipLayerNormalization node when it loads a graph (`SkipLayerNormFusion`). The server's CPU
sessions leave that fusion out (`seqcast.bundle.runtime.CPU_DISABLED_FUSIONS`); this script
measures why:

* the kernels alone: SkipLayerNormalization against LayerNormalization after an Add, on
  (rows, 1, width) float32 inputs, one node per session, single calls alternated;
* decoder steps of bundles, loaded with the server's session settings twice (fusion on and
  off), single steps alternated in one process at a past length of 30, as
  `bench/step_time.py --paired` does.

    python bench/fusions.py --rows 1 16 64 --bundles models/en-de/1 --batch 1 16 --calls 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from seqcast.bundle.runtime import CPU_DISABLED_FUSIONS, RuntimeOptions, session_options

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import Variant, alternate, load, step_feeds  # noqa: E402

WIDTH = 256


def _kernel_session(rows: int, fused: bool) -> ort.InferenceSession:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), n) for n in ("gamma", "beta")]
    if fused:
        nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"], domain="com.microsoft")]
    else:
        nodes = [helper.make_node("Add", ["x", "skip"], ["sum"]),
                 helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [rows, 1, WIDTH]) for n in ("x", "skip")]
    graph = helper.make_graph(nodes, "norm", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return ort.InferenceSession(helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString(),
                                session_options(RuntimeOptions(device="cpu")), providers=["CPUExecutionProvider"], disabled_optimizers=CPU_DISABLED_FUSIONS)


def kernels(rows_list: list[int], calls: int) -> None:
    print("| rows | SkipLayerNormalization: ms | Add + LayerNormalization: ms | unfused / fused |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(1)
    for rows in rows_list:
        feeds = {n: rng.standard_normal((rows, 1, WIDTH)).astype(np.float32) for n in ("x", "skip")}
        fused, unfused = _kernel_session(rows, True), _kernel_session(rows, False)
        np.testing.assert_allclose(unfused.run(None, feeds)[0], fused.run(None, feeds)[0], atol=1e-4)
        a, b, ratio = alternate(calls, lambda: fused.run(None, feeds), lambda: unfused.run(None, feeds))
        print(f"| {rows} | {a:.4f} | {b:.4f} | {ratio:.2f} |", flush=True)


def steps(bundles: list[str], batches: list[int], calls: int) -> None:
    print("\n| bundle | batch | fusion on: ms / step | fusion off: ms / step | off / on | max abs difference |")
    print("|---|---|---|---|---|---|")
    for bundle in bundles:
        variant = Variant.parse(bundle)
        model = load(variant, 1)
        path = str(variant.bundle / model.manifest.decoder.file)
        on = ort.InferenceSession(path, session_options(RuntimeOptions(device="cpu")), providers=["CPUExecutionProvider"])
        off = ort.InferenceSession(path, session_options(RuntimeOptions(device="cpu")), providers=["CPUExecutionProvider"], disabled_optimizers=CPU_DISABLED_FUSIONS)
        names = [o.name for o in on.get_outputs()]
        for batch in batches:
            feeds = step_feeds(model, batch, 30)
            difference = max(float(np.abs(a - b).max()) for a, b in zip(on.run(names, feeds), off.run(names, feeds)))
            a, b, ratio = alternate(calls, lambda: on.run(names, feeds), lambda: off.run(names, feeds))
            print(f"| {variant.label} | {batch} | {a:.3f} | {b:.3f} | {ratio:.3f} | {difference:.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64], help="rows for the kernels alone")
    parser.add_argument("--bundles", nargs="+", default=["models/en-de/1"], help="bundles (or LABEL=BUNDLE) for whole steps")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--calls", type=int, default=2000, help="calls of each kind per cell, alternated")
    args = parser.parse_args()
    print(f"ONNX Runtime's SkipLayerNormFusion, width {WIDTH}, 1 thread; medians of {args.calls} alternated calls; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}\n")
    kernels(args.rows, args.calls)
    steps(args.bundles, args.batch, args.calls)


if __name__ == "__main__":
    main()
