"""Decoder alignments of seqcast-trained transformers: one cross-attention layer, averaged over
heads, as an optional decoder output (the committed en-de bundle got it by a graph edit); and
served on request: the decoding loop reads them only for rows that asked, a real server returns
them unary and streamed, and `seqcast-client translate --alignments / --plot-alignments` shows them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import torch

from seqcast.bundle.decoding import Decoder, greedy_tokens, pad_batch
from seqcast.bundle.loading import Bundle, open_bundle as load_bundle, verify_bundle
from seqcast.bundle.manifest import Manifest
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.bundle.strategies import AlignedToken, BeamSearch, Finish, Greedy, token_sequence
from seqcast.client import BeamSearch as ClientBeamSearch
from seqcast.client import Sampling as ClientSampling
from seqcast.client import SeqcastClient, SeqcastError
from seqcast.client.cli import main as client_main
from seqcast.export.graphs import default_alignment_layer
from seqcast.export.translation.add_alignments import add_alignments, remove_output
from seqcast.export.translation.corpus import read_split
from seqcast.export.translation.train import load_model
from seqcast.export.writing import checksums
from seqcast.server.settings import ServerSettings

from conftest import CORPUS, REPO, ServerThread, committed_models

EN_DE = REPO / "models" / "en-de" / "1"
# Sentences of several words, of different lengths (padded when batched).
TEXTS = [p.source for p in read_split(CORPUS, "test", 300) if 4 <= len(p.source.split()) <= 12][:6]
MAX_NEW = 24


def _without_alignments(models: Path, name: str) -> Path:
    """A copy of en-de as models/<name>/1 whose decoder has no alignments output (as bundles
    exported before there was one), with its manifest and checksums to match."""
    bundle = models / name / "1"
    shutil.copytree(EN_DE, bundle)
    manifest = Manifest.read(bundle)
    onnx.save_model(remove_output(onnx.load(str(bundle / "decoder.onnx")), "alignments"), str(bundle / "decoder.onnx"))
    decoder = manifest.decoder.model_copy(update={"outputs": manifest.decoder.outputs[:-1], "alignments": None})
    Manifest.model_validate({**manifest.model_dump(), "name": name, "decoder": decoder.model_dump(), "alignment_layer": None,
                             "files": checksums(bundle)}).write(bundle)
    return bundle


def _step_alignments(bundle: Path, texts: list[str], steps: int) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Feeds fixed tokens for `steps` steps; returns each step's alignments (B, 1, S), the source
    mask and each step's logits."""
    model = load_bundle(bundle, RuntimeOptions(device="cpu"))
    rt, spec, special = model.runtime, model.manifest.decoder, model.manifest.special_tokens
    src, mask = pad_batch(model.codec.encode(texts), special.pad, np.int64)
    enc = rt.encode(src, mask)
    enc[rt.encoder_spec.attention_mask] = mask
    static = {s.input: enc[s.source] for s in spec.static}
    shapes = {t.name: t.shape for t in spec.inputs}
    state = {s.input: np.zeros((len(texts), shapes[s.input][1], 0, shapes[s.input][3]), np.float32) for s in spec.state}
    alignments, logits = [], []
    for t in range(steps):
        feed = np.full((len(texts), 1), special.bos if t == 0 else 10 + t, np.int64)
        out = rt.step({spec.feed: feed, spec.position_ids: np.full((len(texts), 1), t, np.int64),
                       spec.attention_mask: np.ones((len(texts), t + 1), np.int64), **static, **state})
        state = {s.input: out[s.output] for s in spec.state}
        alignments.append(out[spec.alignments])
        logits.append(out[spec.output])
    return alignments, mask, logits


def _check_rows(alignments: list[np.ndarray], mask: np.ndarray) -> None:
    for step in alignments:
        assert step.shape == (mask.shape[0], 1, mask.shape[1])
        np.testing.assert_allclose(step.sum(axis=-1), 1.0, atol=1e-5)
        assert (step[:, 0][mask == 0] == 0).all()


def test_committed_en_de_bundle_has_alignments_of_its_penultimate_layer() -> None:
    manifest = verify_bundle(EN_DE)
    assert manifest.decoder.alignments == "alignments"
    assert manifest.alignment_layer == default_alignment_layer(manifest.dims["decoder_layers"]) == 1
    texts = [p.source for p in read_split(CORPUS, "test", 6)]
    alignments, mask, _ = _step_alignments(EN_DE, texts, 5)
    assert (mask == 0).any(), "padded sources"
    _check_rows(alignments, mask)


def test_adding_alignments_leaves_every_other_output_unchanged(tmp_path: Path) -> None:
    """The edit, run again on a copy of en-de stripped of the output, gives the same graph output."""
    bundle = _without_alignments(tmp_path, "en-de")
    with pytest.raises(ValueError, match="expected one cross-attention Softmax"):
        add_alignments(bundle, layer=7)
    add_alignments(bundle)  # checks the other outputs bit for bit against the graph without it
    texts = [p.source for p in read_split(CORPUS, "test", 4)]
    ours, _, ours_logits = _step_alignments(bundle, texts, 3)
    committed, _, committed_logits = _step_alignments(EN_DE, texts, 3)
    for a, b in zip(ours + ours_logits, committed + committed_logits):
        np.testing.assert_array_equal(a, b)


def test_trained_transformer_exports_pytorch_cross_attention_head_mean(runs: dict[str, Path], model_dir: Path) -> None:
    bundle = model_dir / "tiny-transformer" / "1"
    manifest = Manifest.read(bundle)
    assert manifest.decoder.alignments == "alignments" and manifest.alignment_layer == 0  # 2 layers: the first
    texts = [p.source for p in read_split(CORPUS, "test", 5)]
    alignments, mask, _ = _step_alignments(bundle, texts, 4)
    _check_rows(alignments, mask)
    # PyTorch: the whole prefix at once, layer 0's cross-attention probabilities by hand.
    model, _, _ = load_model(runs["tiny-transformer"])
    from seqcast.export.onnx_export import round_weights_fp16

    round_weights_fp16(model)
    codec = load_bundle(bundle, RuntimeOptions(device="cpu")).codec
    src, src_mask = pad_batch(codec.encode(texts), manifest.special_tokens.pad, np.int64)
    prefix = torch.tensor([[manifest.special_tokens.bos, 11, 12, 13]] * len(texts))
    with torch.inference_mode():
        _, cross = model.encode(torch.from_numpy(src), torch.from_numpy(src_mask))
        positions = torch.arange(4).expand(len(texts), 4)
        _, _, reference = model.decode(
            prefix, positions, torch.ones_like(prefix), torch.from_numpy(src_mask), model.empty_past(len(texts)), cross, 0
        )
    for t, step in enumerate(alignments):
        np.testing.assert_allclose(step[:, 0], reference[:, t].numpy(), atol=1e-4)


# --- read only for the rows that asked ------------------------------------------------------------


class _Unreadable:
    """Stands in for the alignments output: any attempt to read it fails the test."""

    def numpy(self) -> np.ndarray:
        raise AssertionError("the alignments output was read")

    def __getitem__(self, index: Any) -> np.ndarray:
        raise AssertionError("the alignments output was read")


class _GuardedAlignments:
    """en-de's runtime whose alignments output can't be read while `guard` is set."""

    def __init__(self, runtime: OnnxModel) -> None:
        self.runtime, self.guard = runtime, True
        self.encoder_spec, self.decoder_spec = runtime.encoder_spec, runtime.decoder_spec

    def encode(self, source: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        return self.runtime.encode(source, mask)

    def step(self, feeds: dict[str, Any]) -> dict[str, Any]:
        out = self.runtime.step(feeds)
        if self.guard:
            out[self.decoder_spec.alignments] = _Unreadable()
        return out


def _decode(runtime: Any, model: Bundle, sequences: list, texts: list[str]) -> list[list[Any]]:
    """Every item each sequence emits, decoding the texts together on one Decoder."""
    special = model.manifest.special_tokens
    items: list[list[Any]] = [[] for _ in sequences]

    def emit(i: int, item: Any, finish: Finish | None) -> None:
        if item is not None:
            items[i].append(item)

    for i, seq in enumerate(sequences):
        seq.emit = partial(emit, i)
    decoder = Decoder(runtime)
    decoder.join(sequences, model.codec.encode(texts), special.pad, np.full(len(texts), special.bos, dtype=np.int64))
    while decoder.active:
        decoder.step()
    return items


def test_the_loop_reads_alignments_only_in_steps_where_a_row_asked_for_them() -> None:
    model = load_bundle(EN_DE, RuntimeOptions(device="cpu"))
    eos, sources = model.manifest.special_tokens.eos, model.codec.encode(TEXTS[:3])
    guarded = _GuardedAlignments(model.runtime)
    plain = _decode(guarded, model, [token_sequence(Greedy(), eos, MAX_NEW) for _ in sources], TEXTS[:3])
    assert all(isinstance(t, int) for items in plain for t in items)
    asking = [token_sequence(Greedy(), eos, MAX_NEW, alignment_width=len(sources[1]) if i == 1 else None) for i in range(3)]
    with pytest.raises(AssertionError, match="the alignments output was read"):
        _decode(guarded, model, asking, TEXTS[:3])
    guarded.guard = False
    asking = [token_sequence(Greedy(), eos, MAX_NEW, alignment_width=len(sources[1]) if i == 1 else None) for i in range(3)]
    mixed = _decode(guarded, model, asking, TEXTS[:3])
    assert [all(isinstance(t, AlignedToken) for t in items) for items in mixed] == [False, True, False]
    assert [t.id for t in mixed[1]] == plain[1] and mixed[0] == plain[0] and mixed[2] == plain[2]
    assert all(t.row.shape == (len(sources[1]),) for t in mixed[1])


def test_alignments_kept_on_the_device_reach_the_rows_that_asked_unchanged() -> None:
    """The CUDA path's binding, in host memory: the output stays an OrtValue until a row asks,
    and beam hypotheses get the same rows as with numpy state."""
    model = load_bundle(EN_DE, RuntimeOptions(device="cpu"))
    bound = OnnxModel.from_manifest(EN_DE, model.manifest, RuntimeOptions(device="cpu"))
    bound.state_device = "cpu"
    eos, sources = model.manifest.special_tokens.eos, model.codec.encode(TEXTS[:3])

    def beams() -> list:
        return [token_sequence(BeamSearch(beam_size=3), eos, MAX_NEW, alignment_width=len(s)) for s in sources]

    on_host, on_device = _decode(model.runtime, model, beams(), TEXTS[:3]), _decode(bound, model, beams(), TEXTS[:3])
    assert [[t.id for t in items] for items in on_device] == [[t.id for t in items] for items in on_host]
    for a, b in zip(on_host, on_device):
        np.testing.assert_array_equal(np.stack([t.row for t in a]), np.stack([t.row for t in b]))


# --- through a real server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def en_de_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeqcastClient]:
    """A client of a real server with the committed en-de and `en-de-plain`, a copy without alignments."""
    models = committed_models(tmp_path_factory.mktemp("aligned") / "models", ("en-de",))
    _without_alignments(models, "en-de-plain")
    server = ServerThread(ServerSettings(model_dir=models, port=0, metrics_port=0, default_model="en-de"))
    try:
        with SeqcastClient(server.target) as client:
            yield client
    finally:
        server.stop()


def _rows_alone(model: Bundle, source: list[int], ids: list[int]) -> np.ndarray:
    """The alignments of `ids` for one unpadded source, fed one token per step on its own: (tokens, source)."""
    rt, spec, special = model.runtime, model.manifest.decoder, model.manifest.special_tokens
    src = np.array([source], dtype=np.int64)
    enc = rt.encode(src, np.ones_like(src))
    enc[rt.encoder_spec.attention_mask] = np.ones_like(src)
    static = {s.input: enc[s.source] for s in spec.static}
    shapes = {t.name: t.shape for t in spec.inputs}
    state = {s.input: np.zeros((1, shapes[s.input][1], 0, shapes[s.input][3]), np.float32) for s in spec.state}
    rows = []
    for t, fed in enumerate([special.bos, *ids[:-1]]):
        out = rt.step({spec.feed: np.array([[fed]]), spec.position_ids: np.array([[t]]),
                       spec.attention_mask: np.ones((1, t + 1), np.int64), **static, **state})
        state = {s.input: out[s.output] for s in spec.state}
        rows.append(out[spec.alignments][0, 0])
    return np.stack(rows) if rows else np.zeros((0, len(source)), np.float32)


def _beam_ids(model: Bundle, texts: list[str]) -> list[list[int]]:
    eos = model.manifest.special_tokens.eos
    return _decode(model.runtime, model, [token_sequence(BeamSearch(beam_size=4), eos, MAX_NEW) for _ in texts], texts)


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_en_de_serves_each_tokens_alignment_over_its_real_source_tokens(en_de_client, decoding) -> None:
    """Greedy and beam 4 on padded sources: the served tokens are the loop's own, and each row is
    the graph's alignment for that token, the text fed alone and step by step, within 1e-5."""
    model = load_bundle(EN_DE, RuntimeOptions(device="cpu"))
    sources = model.codec.encode(TEXTS)
    assert len({len(s) for s in sources}) > 2, "padded sources"
    if decoding == "greedy":
        ids, options = greedy_tokens(model.runtime, model.manifest.special_tokens, sources, MAX_NEW), {}
    else:
        ids, options = _beam_ids(model, TEXTS), {"decoding": ClientBeamSearch(4)}
    results = en_de_client.translate(TEXTS, max_new_tokens=MAX_NEW, alignments=True, **options)
    assert [r.text for r in results] == [r.text for r in en_de_client.translate(TEXTS, max_new_tokens=MAX_NEW, **options)]
    assert sum(len(i) for i in ids) >= 3 * len(TEXTS)
    for source, expected, result in zip(sources, ids, results):
        a = result.alignments
        assert a is not None and a.source_tokens == model.codec.source_pieces(source) and a.source_tokens[-1] == "</s>"
        assert a.target_tokens == model.codec.target_pieces(expected)
        weights = np.array(a.weights, dtype=np.float32).reshape(len(expected), len(source))
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(weights, _rows_alone(model, source, expected), atol=1e-5)


def test_en_de_alignments_are_the_same_alone_in_a_batch_and_streamed(en_de_client) -> None:
    for decoding in (None, ClientBeamSearch(4), ClientSampling(seed=5)):
        together = en_de_client.translate(TEXTS, max_new_tokens=MAX_NEW, decoding=decoding, alignments=True)
        # A sampled text's draws are seeded by (seed, its index): alone, only text 0 keeps its index.
        for i in (0,) if isinstance(decoding, ClientSampling) else (0, 3):
            [alone] = en_de_client.translate(TEXTS[i], max_new_tokens=MAX_NEW, decoding=decoding, alignments=True)
            assert together[i].alignments is not None and alone.alignments is not None
            assert alone.alignments.target_tokens == together[i].alignments.target_tokens
            np.testing.assert_allclose(alone.alignments.weights, together[i].alignments.weights, atol=1e-6)
        rows: dict[int, list[list[float]]] = {i: [] for i in range(len(TEXTS))}
        for chunk in en_de_client.translate_stream(TEXTS, max_new_tokens=MAX_NEW, decoding=decoding, alignments=True):
            assert chunk.alignments is not None
            rows[chunk.index] += chunk.alignments.weights
        assert [rows[i] for i in range(len(TEXTS))] == [r.alignments.weights for r in together]


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_without_alignments_refuses_them_naming_the_model_and_the_fix(en_de_client, stream) -> None:
    texts = TEXTS[:2]
    layers = {m.name: m.metadata.get("alignment_layer") for m in en_de_client.list_models()}
    assert layers == {"en-de": "1", "en-de-plain": None}
    assert [r.alignments for r in en_de_client.translate(texts, model="en-de-plain", max_new_tokens=8)] == [None, None]
    with pytest.raises(SeqcastError) as refused:
        if stream:
            list(en_de_client.translate_stream(texts, model="en-de-plain", alignments=True))
        else:
            en_de_client.translate(texts, model="en-de-plain", alignments=True)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "model en-de-plain (version 1) cannot return alignments" in refused.value.message
    assert "python -m seqcast.export.translation.add_alignments" in refused.value.message


def test_client_prints_alignments_and_plots_them(en_de_client, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README's `seqcast-client translate --alignments` and `--plot-alignments alignments.png`."""
    target = ["--target", en_de_client.target]
    assert client_main([*target, "translate", "--alignments", "Save changes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    [result] = en_de_client.translate("Save changes", alignments=True)
    assert result.alignments is not None
    assert lines[0] == result.text and lines[1].split() == result.alignments.source_tokens
    for line, token, weights in zip(lines[2:], result.alignments.target_tokens, result.alignments.weights):
        cells = line.split()
        assert cells[0] == token and [int(c.rstrip("*")) for c in cells[1:]] == [round(100 * w) for w in weights]
        assert cells[1 + int(np.argmax(weights))].endswith("*")
    assert client_main([*target, "translate", "--json", "--alignments", "Save changes"]) == 0
    [printed] = json.loads(capsys.readouterr().out)
    assert printed["alignments"] == asdict(result.alignments)
    assert client_main([*target, "translate", "--stream", "--json", "--alignments", "Save changes"]) == 0
    chunks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row for c in chunks for row in c["alignments"]["weights"]] == result.alignments.weights
    png = tmp_path / "alignments.png"
    assert client_main([*target, "translate", "--plot-alignments", str(png), "Save changes", "The file could not be opened."]) == 0
    assert capsys.readouterr().out.splitlines() == [r.text for r in en_de_client.translate(["Save changes", "The file could not be opened."])]
    from matplotlib.image import imread

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(png).shape[0] > 300
    assert client_main([*target, "translate", "--model", "en-de-plain", "--alignments", "Save changes"]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    assert client_main([*target, "translate", "--stream", "--alignments", "Save changes"]) == 2
    assert "leave out --stream" in capsys.readouterr().err
