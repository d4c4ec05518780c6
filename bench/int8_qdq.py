"""Static QDQ int8 for the decoder, for comparison with the dynamic forms `seqcast quantize` makes.

Folds the bundle's decoder weights (as `seqcast quantize` does), calibrates activation ranges on
the decoder feeds of greedy decoding of dev sentences, and writes a QDQ-format decoder with
`onnxruntime.quantization.quantize_static`. Time it against the others with
`bench/step_time.py --compare int8-qdq=BUNDLE:OUT.onnx` (it takes the bundle's other files).
Measured slower than dynamic quantization (docs/benchmarks.md), so not a `seqcast quantize` form.

    python bench/int8_qdq.py models/en-de/1 /tmp/qdq-decoder.onnx
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from seqcast.bundle.decoding import greedy_tokens
from seqcast.bundle.loading import open_bundle
from seqcast.bundle.runtime import RuntimeOptions
from seqcast.export.quantize import fold_weights
from seqcast.export.translation.corpus import encode_sources, read_split

REPO = Path(__file__).resolve().parents[1]


def decoder_feeds(bundle: Path, sentences: int, max_new_tokens: int) -> list[dict[str, np.ndarray]]:
    """Every decoder step's inputs while greedily translating the first dev sentences."""
    model = open_bundle(bundle, RuntimeOptions(device="cpu"))
    feeds: list[dict[str, np.ndarray]] = []
    step = model.runtime.step

    def recording(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds.append({k: np.array(v) for k, v in f.items()})
        return step(f)

    model.runtime.step = recording
    pairs = read_split(REPO / "data" / "en-de", "dev", sentences)
    sources = encode_sources(model.codec.tokenizer, [p.source for p in pairs], model.manifest.max_source_tokens)
    greedy_tokens(model.runtime, model.manifest.special_tokens, sources, max_new_tokens, 8)
    return feeds


class Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path, help="the QDQ decoder.onnx to write")
    parser.add_argument("--sentences", type=int, default=32)
    args = parser.parse_args()
    feeds = decoder_feeds(args.bundle, args.sentences, 40)[::2]
    model = onnx.load(str(args.bundle / "decoder.onnx"))
    fold_weights(model)
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        onnx.save_model(model, str(folded))
        quantize_static(folded, args.out, Feeds(feeds), quant_format=QuantFormat.QDQ, per_channel=False,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                        extra_options={"MatMulConstBOnly": True})
    print(f"{args.out}: calibrated on {len(feeds)} decoder steps")


if __name__ == "__main__":
    main()
