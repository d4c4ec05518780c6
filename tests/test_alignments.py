"""Decoder alignments of seqcast-trained transformers: one cross-attention layer, averaged over
heads, as an optional decoder output (the committed en-de bundle got it by a graph edit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seqcast.export.add_alignments import add_alignments, remove_output
from seqcast.export.corpus import read_split
from seqcast.export.graphs import default_alignment_layer
from seqcast.export.train import load_model
from seqcast.server.decoding import pad_batch
from seqcast.server.manifest import Manifest
from seqcast.server.models import load_model as load_bundle, verify_bundle
from seqcast.server.runtime import RuntimeOptions

from conftest import CORPUS, REPO

EN_DE = REPO / "models" / "en-de" / "1"


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
    texts = [p.en for p in read_split(CORPUS, "test", 6)]
    alignments, mask, _ = _step_alignments(EN_DE, texts, 5)
    assert (mask == 0).any(), "padded sources"
    _check_rows(alignments, mask)


def test_adding_alignments_leaves_every_other_output_unchanged(tmp_path: Path) -> None:
    """The edit, run again on a copy of en-de stripped of the output, gives the same graph output."""
    import onnx
    import shutil

    bundle = tmp_path / "en-de"
    shutil.copytree(EN_DE, bundle)
    manifest = Manifest.read(bundle)
    onnx.save_model(remove_output(onnx.load(str(bundle / "decoder.onnx")), "alignments"), str(bundle / "decoder.onnx"))
    decoder = manifest.decoder.model_copy(update={"outputs": manifest.decoder.outputs[:-1], "alignments": None})
    Manifest.model_validate({**manifest.model_dump(), "decoder": decoder.model_dump(), "alignment_layer": None}).write(bundle)
    with pytest.raises(ValueError, match="expected one cross-attention Softmax"):
        add_alignments(bundle, layer=7)
    add_alignments(bundle)  # checks the other outputs bit for bit against the graph without it
    texts = [p.en for p in read_split(CORPUS, "test", 4)]
    ours, _, ours_logits = _step_alignments(bundle, texts, 3)
    committed, _, committed_logits = _step_alignments(EN_DE, texts, 3)
    for a, b in zip(ours + ours_logits, committed + committed_logits):
        np.testing.assert_array_equal(a, b)


def test_trained_transformer_exports_pytorch_cross_attention_head_mean(runs: dict[str, Path], model_dir: Path) -> None:
    bundle = model_dir / "tiny-transformer" / "1"
    manifest = Manifest.read(bundle)
    assert manifest.decoder.alignments == "alignments" and manifest.alignment_layer == 0  # 2 layers: the first
    texts = [p.en for p in read_split(CORPUS, "test", 5)]
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
        _, _, reference = model.decode_with_alignments(
            prefix, positions, torch.ones_like(prefix), torch.from_numpy(src_mask), model.empty_past(len(texts)), cross, 0
        )
    for t, step in enumerate(alignments):
        np.testing.assert_allclose(step[:, 0], reference[:, t].numpy(), atol=1e-4)
