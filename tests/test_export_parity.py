"""Exported graphs reproduce PyTorch, and cached decoding reproduces uncached decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from seqcast.bundle.decoding import greedy_tokens
from seqcast.bundle.loading import BundleRefused, open_bundle as load_bundle, sha256
from seqcast.bundle.manifest import Manifest
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.export.cli import main as seqcast
from seqcast.export.graphs import TorchRuntime, graphs_for
from seqcast.export.onnx_export import round_weights_fp16
from seqcast.export.parity import TOLERANCE, ParityReport, default_cases, graph_parity, greedy_uncached
from seqcast.export.translation.corpus import read_split
from seqcast.export.translation.train import SPECIAL, load_model

from conftest import CORPUS, TINY_MODELS

MODELS = list(TINY_MODELS)


def _torch_and_onnx(runs: dict[str, Path], model_dir: Path, name: str):
    model, cfg, tokenizer = load_model(runs[name])
    round_weights_fp16(model)  # as export does: the bundle stores weights in float16
    bundle = model_dir / name / "1"
    onnx_rt = OnnxModel.from_manifest(bundle, Manifest.read(bundle), RuntimeOptions(device="cpu"))
    return model, cfg, tokenizer, TorchRuntime(graphs_for(model)), onnx_rt


@pytest.mark.parametrize("name", MODELS)
def test_manifest_records_parity_measured_at_export(model_dir: Path, name: str) -> None:
    parity = Manifest.read(model_dir / name / "1").parity
    assert parity.tolerance == TOLERANCE
    assert 0 < parity.max_abs_diff_decoder <= TOLERANCE
    assert parity.max_abs_diff_encoder <= TOLERANCE
    assert parity.sentences >= 20 and parity.cached_matches_uncached and parity.onnx_matches_pytorch


@pytest.mark.parametrize("name", MODELS)
def test_onnx_logits_match_pytorch_across_batch_source_and_past_lengths(runs, model_dir, name) -> None:
    _, cfg, _, torch_rt, onnx_rt = _torch_and_onnx(runs, model_dir, name)
    cases = default_cases(stateful_cache=name == "tiny-transformer")
    assert {c.batch for c in cases} >= {1, 3, 8}
    if name == "tiny-transformer":
        assert {c.past_length for c in cases} >= {0, 1, 12}
    report = ParityReport(tolerance=TOLERANCE)
    graph_parity(torch_rt, onnx_rt, cfg.vocab_size, cases, report)
    assert report.problems == []
    assert report.cases == len(cases)
    assert report.max_abs_diff_decoder <= 1e-4 and report.max_abs_diff_encoder <= 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_cached_greedy_equals_uncached_and_pytorch_on_real_sentences(runs, model_dir, name) -> None:
    model, _, tokenizer, torch_rt, onnx_rt = _torch_and_onnx(runs, model_dir, name)
    pairs = read_split(CORPUS, "test", 24)
    sources = [e.ids + [SPECIAL.eos] for e in tokenizer.encode_batch([p.source for p in pairs])]
    uncached = [greedy_uncached(model, s, SPECIAL, 48) for s in sources]
    cached = greedy_tokens(torch_rt, SPECIAL, sources, 48)
    served = greedy_tokens(onnx_rt, SPECIAL, sources, 48)
    assert sum(len(u) for u in uncached) >= 2 * len(sources), "the model must produce real sequences"
    assert cached == uncached
    assert served == uncached


def test_export_fails_loudly_when_parity_fails(runs, tmp_path: Path, capsys) -> None:
    code = seqcast(["--log-level", "ERROR", "export", "--run-dir", str(runs["tiny-transformer"]),
                    "--models-dir", str(tmp_path), "--name", "strict", "--tolerance", "1e-12"])
    assert code == 1
    assert "export parity failed" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "1").exists()
    assert [p.name for p in (tmp_path / "strict").iterdir()] == []  # no half-written bundle left


@pytest.mark.parametrize("name", MODELS)
def test_every_axis_the_manifest_calls_symbolic_is_symbolic_in_the_graph(model_dir: Path, name: str) -> None:
    bundle = model_dir / name / "1"
    manifest = Manifest.read(bundle)
    for spec, file in ((manifest.encoder, manifest.encoder.file), (manifest.decoder, manifest.decoder.file)):
        graph = onnx.load(str(bundle / file), load_external_data=False).graph
        dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}
        for tensor in [*spec.inputs, *spec.outputs]:
            assert dims[tensor.name] == tensor.shape, tensor.name


def test_a_graph_with_a_fixed_axis_is_refused_at_load(copy_models) -> None:
    models = copy_models()
    bundle = models / "tiny-transformer" / "1"
    path = bundle / "decoder.onnx"
    graph_model = onnx.load(str(path))
    graph_model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4  # batch fixed to 4
    onnx.save(graph_model, str(path))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["decoder.onnx"] = sha256(path)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleRefused, match="symbolic 'batch' but the graph fixed it to 4"):
        load_bundle(bundle, RuntimeOptions(device="cpu"))


def test_bundle_weights_are_stored_in_float16_and_computed_in_float32(model_dir: Path) -> None:
    bundle = model_dir / "tiny-transformer" / "1"
    graph = onnx.load(str(bundle / "decoder.onnx")).graph
    halves = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves, "large weights are stored as float16"
    casts = {n.input[0] for n in graph.node if n.op_type == "Cast"}
    assert {h.name for h in halves} <= casts
    assert Manifest.read(bundle).export.weights_dtype == "float16"
    out = OnnxModel.from_manifest(bundle, Manifest.read(bundle), RuntimeOptions(device="cpu"))
    enc = out.encode(np.array([[5, 6, 2]], dtype=np.int64), np.ones((1, 3), dtype=np.int64))
    assert all(v.dtype == np.float32 for v in enc.values())
