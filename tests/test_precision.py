"""Precision variants: `seqcast quantize` and `seqcast export --precision` on real bundles.

The committed en-de and tourism bundles are converted through the CLI into temporary
directories; the quality guard scores a few test sentences or windows (the whole split is what
the defaults score). Other tests that need an int8 en-de bundle can make one with
`seqcast.export.precision.quantize_bundle(src, dst, "int8")`.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from seqcast.bundle.decoding import forecast_values, greedy_tokens
from seqcast.bundle.loading import open_bundle
from seqcast.bundle.manifest import Manifest
from seqcast.bundle.runtime import RuntimeOptions
from seqcast.client import SeqcastClient
from seqcast.export.cli import main as seqcast
from seqcast.export.precision import quantize_bundle
from seqcast.export.quality import QualityBar, loaded, reference_logps
from seqcast.export.quantize import fold_weights, per_row_matmuls, weight_matmuls
from seqcast.export.translation.corpus import read_split
from seqcast.export.writing import exported_precision

from conftest import committed_models, start_server

REPO = Path(__file__).resolve().parents[1]
EN_DE = REPO / "models" / "en-de" / "1"
TOURISM = REPO / "models" / "tourism" / "1"
SENTENCES = ["The file could not be opened.", "Save your changes before closing the window.", "Delete this folder?",
             "No printer was found.", "Please enter a valid e-mail address.", "The download has finished."]


def _quantize(*args: str) -> int:
    return seqcast(["--log-level", "WARNING", "quantize", *args])


@pytest.fixture(scope="module")
def en_de_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "en-de-int8" / "1"
    assert _quantize(str(EN_DE), "--out", str(out), "--quality-limit", "48") == 0
    return out


def _weight_matmuls(path: Path) -> int:
    model = onnx.load(str(path))
    fold_weights(model)
    return weight_matmuls(model)


def _translate(bundle: Path) -> list[list[int]]:
    model = open_bundle(bundle, RuntimeOptions(device="cpu"))
    return greedy_tokens(model.runtime, model.manifest.special_tokens, model.codec.encode(SENTENCES), 32)


@pytest.mark.parametrize("graph", ["encoder.onnx", "decoder.onnx"])
def test_every_matmul_with_a_weight_is_quantized(en_de_int8: Path, graph: str) -> None:
    quantized = onnx.load(str(en_de_int8 / graph))
    integer = sum(1 for n in quantized.graph.node if n.op_type == "MatMulInteger")
    assert integer >= _weight_matmuls(EN_DE / graph) > 0
    assert weight_matmuls(quantized) == 0, "a float MatMul with an initializer weight is left"
    # The tied output projection included: per decoder layer 4 self-attention and 2 cross-attention
    # projections and 2 feed-forward MatMuls, plus the projection to the vocabulary.
    if graph == "decoder.onnx":
        assert integer == 3 * 8 + 1


def test_int8_bundle_loads_in_the_server_and_translates_close_to_float32(en_de_int8: Path) -> None:
    int8, fp32 = _translate(en_de_int8), _translate(EN_DE)
    assert all(tokens for tokens in int8)
    assert sum(a == b for a, b in zip(int8, fp32)) >= len(SENTENCES) // 2
    assert _translate(en_de_int8) == int8  # deterministic


def test_int8_sentences_decode_the_same_alone_and_in_batches_of_16(en_de_int8: Path) -> None:
    """Activations are quantized per row, so in-flight batching cannot change a sentence's tokens.
    (ONNX Runtime's quantize_dynamic, one scale per call, changes some of these 64: see
    docs/benchmarks.md.)"""
    model = open_bundle(en_de_int8, RuntimeOptions(device="cpu"))
    sources = model.codec.encode([pair.source for pair in read_split(REPO / "data" / "en-de", "test", 64)])
    special = model.manifest.special_tokens
    alone = greedy_tokens(model.runtime, special, sources, 32, batch_size=1)
    assert greedy_tokens(model.runtime, special, sources, 32, batch_size=16) == alone


def test_the_server_lists_an_int8_bundle_and_batching_never_changes_its_tokens(en_de_int8: Path) -> None:
    """Served beside its float32 source: 64 texts in one request (one batch) and single-text
    requests joining it under in-flight batching each get what the int8 bundle's own decoding of
    that text alone gives."""
    models = committed_models(en_de_int8.parents[1], ("en-de",))
    texts = [pair.source for pair in read_split(REPO / "data" / "en-de", "test", 64)]
    model = open_bundle(en_de_int8, RuntimeOptions(device="cpu"))
    alone = greedy_tokens(model.runtime, model.manifest.special_tokens, model.codec.encode(texts), 32, batch_size=1)
    expected = [model.codec.decode(tokens) for tokens in alone]
    server = start_server(models, default_model="en-de-int8", default_forecast_model="", log_level="WARNING")
    try:
        with SeqcastClient(server.target) as client, ThreadPoolExecutor(9) as pool:
            listed = {m.name: m.metadata["precision"] for m in client.list_models()}
            together = pool.submit(client.translate, texts, max_new_tokens=32)
            singles = list(pool.map(lambda t: client.translate(t, max_new_tokens=32)[0].text, texts[:16]))
            streamed = ["".join(c.text for c in client.translate_stream(t, max_new_tokens=32)) for t in texts[:4]]
            batch = [r.text for r in together.result()]
    finally:
        server.stop()
    assert listed == {"en-de-int8": "int8", "en-de": "fp32"}
    assert batch == expected
    assert singles == expected[:16] and streamed == expected[:4]


def test_int8_manifest_records_precision_method_ops_sizes_and_quality(en_de_int8: Path) -> None:
    manifest = Manifest.read(en_de_int8)
    info = manifest.precision
    assert (manifest.name, manifest.version, manifest.export.weights_dtype) == ("en-de-int8", "1", "int8")
    assert info.precision == "int8" and "scaled per row" in info.method and info.devices == ["cpu"]
    assert info.source == "en-de v1" and info.source_decoder_sha256 == Manifest.read(EN_DE).files["decoder.onnx"]
    assert info.quantized_ops["decoder.onnx"]["MatMulInteger"] == info.weight_matmuls["decoder.onnx"] == 25
    assert info.quantized_ops["decoder.onnx"]["Gather"] == 1  # the embedding table is int8 too
    assert info.file_sizes == {f.name: f.stat().st_size for f in en_de_int8.iterdir() if f.name != "manifest.json"}
    assert sum(info.file_sizes.values()) < 0.7 * sum(f.stat().st_size for f in EN_DE.iterdir())
    quality = info.quality
    assert quality is not None and quality.passed and quality.metric == "chrF"
    assert quality.subset and quality.items == 48 and quality.reference - quality.value <= 0.5
    assert 0 < quality.max_abs_delta_logp < 5 and quality.teacher_forced_tokens > 48


def test_quality_guard_refuses_past_the_bar_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "en-de" / "2"
    assert _quantize(str(EN_DE), "--out", str(out), "--quality-limit", "8", "--max-chrf-drop", "-100") == 1
    err = capsys.readouterr().err
    assert "quality guard failed" in err and "chrF" in err and "max |delta log p|" in err
    assert not out.exists() and not any(p.name.startswith(".") for p in out.parent.iterdir())


def test_an_int8_bundle_is_not_quantized_again(en_de_int8: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _quantize(str(en_de_int8), "--out", str(tmp_path / "x" / "1")) == 2
    assert "already a int8 bundle" in capsys.readouterr().err


def test_forecast_bundle_quantized_within_one_percent_mase(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "tourism" / "1"
    shutil.copytree(TOURISM, source)
    assert _quantize(str(source), "--quality-limit", "64") == 0  # no --out: the model's next version
    out = tmp_path / "tourism" / "2"
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["precision"] == "int8" and printed["quality"]["metric"] == "MASE"
    manifest = Manifest.read(out)
    assert (manifest.name, manifest.version, printed["bundle"]) == ("tourism", "2", str(out))
    quality = manifest.precision.quality
    assert quality.passed and quality.items == 64 and quality.value <= quality.reference * 1.01
    assert sum(manifest.precision.quantized_ops["decoder.onnx"].values()) >= manifest.precision.weight_matmuls["decoder.onnx"] > 0
    model = open_bundle(out, RuntimeOptions(device="cpu"))
    point = manifest.forecast.columns.index(manifest.forecast.point)
    values = forecast_values(model.runtime, [np.linspace(-1, 1, 32, dtype=np.float32)], 8, point)
    assert values.shape == (1, 8, len(manifest.forecast.columns)) and np.isfinite(values).all()
    assert _quantize(str(TOURISM), "--out", str(tmp_path / "t" / "1"), "--quality-limit", "16", "--max-mase-increase", "-1") == 1
    assert "MASE" in capsys.readouterr().err


def test_fp16_bundle_keeps_float32_io_and_is_marked_cuda_only(tmp_path: Path) -> None:
    out = tmp_path / "en-de-fp16" / "1"
    assert _quantize(str(EN_DE), "--precision", "fp16", "--out", str(out), "--quality-limit", "8") == 0
    manifest = Manifest.read(out)
    info = manifest.precision
    assert info.precision == "fp16" and info.devices == ["cuda"] and manifest.export.weights_dtype == "float16"
    assert "keep_io_types=True" in info.method and "LayerNormalization" in info.method
    assert info.weight_matmuls["decoder.onnx"] == 25 and info.quantized_ops["decoder.onnx"]["MatMul"] >= 24
    # The tied embedding is stored once, as in the source (whose large weights are float16 already).
    assert info.file_sizes["decoder.onnx"] < 1.01 * (EN_DE / "decoder.onnx").stat().st_size
    for graph in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(out / graph))
        onnx.checker.check_model(model, full_check=True)
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
        assert {n.op_type for n in model.graph.node if n.op_type == "LayerNormalization"}
        session = ort.InferenceSession(str(out / graph), providers=["CPUExecutionProvider"])
        assert {a.type for a in session.get_inputs() + session.get_outputs()} <= {"tensor(int64)", "tensor(float)"}
    assert info.quality is None or info.quality.passed


def test_fp16_keeps_each_attention_node_in_float32(model_dir: Path, tmp_path: Path) -> None:
    """An exported transformer's attention is one ONNX Attention node, softmax inside: fp16 keeps
    it in float32, as it keeps Softmax, and casts around it."""
    out = tmp_path / "tiny-fp16" / "1"
    assert _quantize(str(model_dir / "tiny-transformer" / "1"), "--precision", "fp16", "--out", str(out), "--quality-limit", "4") == 0
    assert "Attention" in Manifest.read(out).precision.method
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / "decoder.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert attention and any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    for node in attention:
        assert {types[name] for name in node.input if name} == {onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL}


def test_quantize_bundle_is_the_function_behind_the_command(en_de_int8: Path, tmp_path: Path) -> None:
    manifest = quantize_bundle(EN_DE, tmp_path / "en-de" / "7", "int8", QualityBar(limit=8))
    assert (manifest.name, manifest.version, manifest.precision.precision) == ("en-de", "7", "int8")
    assert manifest.files["decoder.onnx"] == Manifest.read(en_de_int8).files["decoder.onnx"]  # reproducible


def test_int8_transformers_are_fused_unless_asked_not_to(en_de_int8: Path, tmp_path: Path) -> None:
    fused = {n.op_type for n in onnx.load(str(en_de_int8 / "decoder.onnx")).graph.node}
    assert {"SkipLayerNormalization", "BiasGelu", "MatMulInteger"} <= fused
    assert "fusions" in Manifest.read(en_de_int8).precision.method
    out = tmp_path / "en-de" / "3"
    assert _quantize(str(EN_DE), "--no-fuse", "--out", str(out), "--quality-limit", "8") == 0
    plain = {n.op_type for n in onnx.load(str(out / "decoder.onnx")).graph.node}
    assert "MatMulInteger" in plain and not {"SkipLayerNormalization", "BiasGelu"} & plain
    assert "fusions" not in Manifest.read(out).precision.method


@pytest.mark.parametrize(("args", "op"), [(["--int8-form", "matmulnbits-8bit", "--no-fuse"], "MatMulNBits"),
                                          (["--int8-form", "qint8-per-tensor"], "DynamicQuantizeLinear"),
                                          (["--precision", "fp32", "--fuse"], "SkipLayerNormalization")])
def test_the_other_forms_measured_in_the_benchmarks(tmp_path: Path, args: list[str], op: str) -> None:
    out = tmp_path / "en-de" / "4"
    assert _quantize(str(EN_DE), *args, "--out", str(out), "--quality-limit", "4") == 0
    assert op in {n.op_type for n in onnx.load(str(out / "decoder.onnx")).graph.node}
    if op == "MatMulNBits":
        # Its activations are quantized per row block, so a sentence decodes the same alone and in
        # a batch (the default form's per-call activation scale does not promise that).
        model = open_bundle(out, RuntimeOptions(device="cpu"))
        sources = model.codec.encode(SENTENCES)
        alone = [greedy_tokens(model.runtime, model.manifest.special_tokens, [s], 32)[0] for s in sources]
        assert greedy_tokens(model.runtime, model.manifest.special_tokens, sources, 32) == alone


def test_a_per_row_matmul_with_bias_stays_close_to_float32_and_ignores_its_batch_mates() -> None:
    """One Linear (MatMul + bias Add, rows of very different sizes) through `per_row_matmuls`, run
    with ONNX Runtime's full optimizations as the server runs it: each row within int8 error of
    float32, bias included, and the same alone as beside a row 1000x larger."""
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((64, 48)).astype(np.float32), np.full(48, -30, np.float32)
    inits = [onnx.numpy_helper.from_array(weight, "w"), onnx.numpy_helper.from_array(bias, "b")]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["xw"]), onnx.helper.make_node("Add", ["xw", "b"], ["y"])], "linear",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "length", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "length", 48])], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=9)
    assert per_row_matmuls(model) == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, 3, 64)).astype(np.float32) * np.array([1, 1000], np.float32)[:, None, None]
    (batched,) = session.run(None, {"x": x})
    error = np.abs(batched - (x @ weight + bias))
    assert (error <= 0.03 * np.abs(x @ weight).max(-1, keepdims=True)).all()
    np.testing.assert_array_equal(session.run(None, {"x": x[:1]})[0], batched[:1])


def test_teacher_forcing_in_one_call_equals_step_by_step_and_unbatched() -> None:
    """The guard feeds a transformer the padded reference batch in one call; RNN decoders (one
    token per step) go step by step, carrying state. Every way gives the same log-probabilities."""
    model = loaded(EN_DE, Manifest.read(EN_DE), threads=1)
    sources = model.codec.encode(["Delete this folder?", "The download has finished.", "No printer was found."])
    targets = model.codec.encode(["Diesen Ordner löschen?", "Der Download ist abgeschlossen.", "Kein Drucker gefunden."])
    one_call = reference_logps(model, sources, targets, one_call=True)
    stepped = reference_logps(model, sources, targets, one_call=False)
    alone = [reference_logps(model, [s], [t])[0] for s, t in zip(sources, targets)]
    for a, b, c, target in zip(one_call, stepped, alone, targets):
        assert a.shape == (len(target),) and (a <= 0).all()
        np.testing.assert_allclose(a, b, atol=1e-4)
        np.testing.assert_allclose(a, c, atol=1e-4)


def test_manifests_without_a_precision_section_read_as_float32(tmp_path: Path) -> None:
    raw = json.loads((EN_DE / "manifest.json").read_text())
    assert "precision" not in raw  # written before precision variants existed
    assert Manifest.read(EN_DE).precision.precision == "fp32"
    assert open_bundle(EN_DE, RuntimeOptions(device="cpu")).manifest.precision.devices == ["cpu", "cuda"]
    exported = exported_precision(EN_DE, "float16")  # what exports write from now on
    assert exported.precision == "fp32" and "float16" in exported.method and exported.file_sizes["decoder.onnx"] > 0


def test_export_at_int8_writes_the_quantized_bundle_in_place_of_float32(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert seqcast(["--log-level", "WARNING", "train-forecast", "--data", "tourism", "--architecture", "ar",
                    "--run-dir", str(run)]) == 0  # least squares: a second
    models = tmp_path / "models"
    args = ["--log-level", "WARNING", "export", "--run-dir", str(run), "--models-dir", str(models), "--name", "ar-int8",
            "--precision", "int8", "--quality-limit", "32", "--max-mase-increase", "0.5"]
    assert seqcast(args) == 0
    manifest = Manifest.read(models / "ar-int8" / "1")
    assert manifest.precision.precision == "int8" and manifest.precision.quality.passed
    assert sum(manifest.precision.quantized_ops["decoder.onnx"].values()) >= 1
    assert manifest.parity.onnx_matches_pytorch  # the float32 export's parity, measured before quantizing
    assert sorted(p.name for p in models.iterdir()) == ["ar-int8"]  # no float32 copy left behind
