"""`seqcast import-hf`: a Hugging Face Marian checkpoint served by seqcast decodes exactly as transformers does.

One small random-weight Marian (SentencePiece models trained here on data/en-de, saved by
`MarianTokenizer` and `MarianMTModel.save_pretrained`, OPUS-MT's vocabulary layout) is built and
imported through the CLI once per session; a second one covers the other config choices
(separate vocabularies, no embedding scale, another activation). Decoding goes through the
server's numpy loop (`greedy_tokens`, `Decoder` with `BeamSequence`) on `OnnxModel`, and through
a real gRPC server (one per module) with alignments requested.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from seqcast.bundle.decoding import Decoder, greedy_tokens, pad_batch
from seqcast.bundle.loading import open_bundle as load_bundle
from seqcast.bundle.manifest import Manifest
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.bundle.strategies import BeamSearch, BeamSequence, Finish
from seqcast.client import BeamSearch as ClientBeamSearch
from seqcast.client import Sampling as ClientSampling
from seqcast.client import SeqcastClient, Translation
from seqcast.export.cli import main as seqcast
from seqcast.export.translation.corpus import read_split
from seqcast.export.translation.hf_import import source_model_diff
from seqcast.export.translation.marian import SUPPRESSED_LOGIT
from seqcast.export.translation.random_marian import RandomMarian, build_random_marian
from seqcast.server.settings import ServerSettings

from conftest import CORPUS, ServerThread

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

MAIN = RandomMarian(activation="swish", scale_embedding=True, separate_vocabs=False, seed=0)
VARIANT = RandomMarian(activation="relu", scale_embedding=False, separate_vocabs=True, seed=1, d_model=48, ffn=96)
MAX_NEW = 32


@dataclass
class Imported:
    checkpoint: Path
    bundle: Path
    hf: Any  # MarianMTModel
    tokenizer: Any  # MarianTokenizer
    runtime: OnnxModel
    manifest: Manifest


def _import(root: Path, name: str, spec: RandomMarian, english: list[str], german: list[str]) -> Imported:
    """Builds the checkpoint under root and runs the README's command in root (bundle in root/models)."""
    checkpoint = build_random_marian(root / f"{name}-checkpoint", english, german, spec)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert seqcast(["--log-level", "WARNING", "import-hf", str(checkpoint), "--name", name]) == 0
    finally:
        os.chdir(cwd)
    bundle = root / "models" / name / "1"
    manifest = Manifest.read(bundle)
    hf = transformers.MarianMTModel.from_pretrained(str(checkpoint), local_files_only=True, attn_implementation="eager").eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
    return Imported(checkpoint, bundle, hf, tokenizer, OnnxModel.from_manifest(bundle, manifest, RuntimeOptions(device="cpu")), manifest)


@pytest.fixture(scope="session")
def marian(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Imported]:
    """Both random Marians, built and imported through `seqcast import-hf` once."""
    root = tmp_path_factory.mktemp("marian")
    pairs = read_split(CORPUS, "train", 3000)
    english, german = [p.source for p in pairs], [p.target for p in pairs]
    return {"main": _import(root, "opus-tiny", MAIN, english, german),
            "variant": _import(root, "opus-tiny-separate", VARIANT, english, german)}


@pytest.fixture(scope="session")
def test_sentences() -> list[str]:
    return [p.source for p in read_split(CORPUS, "test", 400)]


def _source_ids(m: Imported, texts: list[str]) -> list[list[int]]:
    return m.tokenizer(texts).input_ids


@torch.inference_mode()
def _generate(m: Imported, texts: list[str], **kwargs: Any) -> list[list[int]]:
    """transformers' generate on the padded batch; the start token, eos and padding left out.

    `forced_eos_token_id` (OPUS-MT sets it) is turned off: it replaces the last token of a
    sequence that reaches the limit with eos, where seqcast emits the limit's token and ends.
    """
    special = m.manifest.special_tokens
    enc = m.tokenizer(texts, return_tensors="pt", padding=True)
    out = []
    for ids in m.hf.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False, forced_eos_token_id=None, **kwargs).tolist():
        ids = ids[1:]
        out.append(ids[: ids.index(special.eos)] if special.eos in ids else ids)
    return out


# --- the bundle ---------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["main", "variant"])
def test_import_writes_a_parity_checked_bundle_the_server_loads(marian, which) -> None:
    m = marian[which]
    manifest = m.manifest
    assert manifest.architecture == "marian" and manifest.task == "translation"
    assert manifest.tokenizer == "tokenizer.json" and manifest.target_tokenizer == "target_tokenizer.json"
    assert manifest.export.weights_dtype == "float32"
    cfg = m.hf.config
    assert manifest.special_tokens.bos == cfg.decoder_start_token_id == cfg.pad_token_id
    assert manifest.special_tokens.eos == cfg.eos_token_id == 0
    assert manifest.dims["d_model"] == cfg.d_model and manifest.dims["decoder_layers"] == cfg.decoder_layers
    parity = manifest.parity
    assert parity.max_abs_diff_encoder <= 1e-4 and parity.max_abs_diff_decoder <= 1e-4
    assert parity.max_abs_diff_source_model is not None and parity.max_abs_diff_source_model <= 1e-4
    assert parity.sentences >= 20 and parity.cached_matches_uncached and parity.onnx_matches_pytorch
    assert manifest.source is not None and manifest.source.model_type == "marian"
    assert manifest.source.directory == str(m.checkpoint.resolve())
    assert set(manifest.source.files) >= {"config.json", "model.safetensors", "source.spm", "target.spm", "vocab.json"}
    names = {t.name for t in manifest.decoder.inputs}
    assert {"position_ids", "decoder_attention_mask", "past_key_values.0.decoder.key", "past_key_values.1.encoder.value"} <= names
    assert {"present.0.encoder.key", "present.1.encoder.value"} <= {t.name for t in manifest.encoder.outputs}
    assert manifest.decoder.alignments == "alignments" and manifest.alignment_layer == 0
    loaded = load_bundle(m.bundle, RuntimeOptions(device="cpu"))
    assert loaded.codec is not None and loaded.manifest.name == manifest.name


def test_an_imported_bundle_quantizes_to_int8_checked_on_the_default_corpus(marian, tmp_path, capsys) -> None:
    """An imported bundle records no training corpus: the quality guard reads data/en-de's test
    split. Its attention is one ONNX Attention node per block, which leaves the transformer
    optimizer nothing to fuse: --fuse is refused with the reason."""
    plain, fused = tmp_path / "opus-tiny" / "2", tmp_path / "opus-tiny" / "3"
    quality = ["--quality-limit", "4", "--max-chrf-drop", "100"]  # random weights: chrF says nothing
    assert seqcast(["--log-level", "WARNING", "quantize", str(marian["main"].bundle), "--out", str(plain), *quality]) == 0
    precision = Manifest.read(plain).precision
    assert precision.precision == "int8" and "fusions" not in precision.method
    assert precision.quantized_ops["decoder.onnx"]["MatMulInteger"] == precision.weight_matmuls["decoder.onnx"] > 0
    assert precision.quality is not None and precision.quality.split == "data/en-de/test"
    ops = {node.op_type for node in onnx.load(str(plain / "decoder.onnx")).graph.node}
    assert "Attention" in ops
    assert load_bundle(plain, RuntimeOptions(device="cpu")).manifest.precision.precision == "int8"
    capsys.readouterr()
    assert seqcast(["--log-level", "WARNING", "quantize", str(marian["main"].bundle), "--out", str(fused), "--fuse", *quality]) != 0
    assert "one ONNX Attention node per block" in capsys.readouterr().err
    assert not fused.exists()


def test_config_choices_are_honoured(marian) -> None:
    main, variant = marian["main"].hf.config, marian["variant"].hf.config
    assert main.share_encoder_decoder_embeddings and not variant.share_encoder_decoder_embeddings
    assert main.scale_embedding and not variant.scale_embedding
    assert {main.activation_function, variant.activation_function} == {"swish", "relu"}
    tok = json.loads((marian["variant"].checkpoint / "tokenizer_config.json").read_text())
    assert tok["separate_vocabs"] is True and (marian["variant"].checkpoint / "target_vocab.json").is_file()


# --- logits, tokens and alignments against transformers -----------------------------------------


@pytest.mark.parametrize("which", ["main", "variant"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_logits_match_transformers_for_padded_batches_and_past_lengths_0_to_13(marian, test_sentences, which, batch) -> None:
    m = marian[which]
    texts = test_sentences[batch * 3 : batch * 4]  # different lengths: padded sources
    sources = _source_ids(m, texts)
    assert batch == 1 or len({len(s) for s in sources}) > 1
    start = m.manifest.special_tokens.bos
    rng = np.random.default_rng(batch)
    # 14 decoder tokens: the step at past length t is compared for t = 0, 1, ..., 13.
    prefixes = [[start] + rng.integers(1, m.manifest.dims["vocab_size"] - 1, 13).tolist() for _ in texts]
    diff = source_model_diff(m.hf, m.runtime, sources, prefixes, (m.manifest.special_tokens.pad,))
    assert diff <= 1e-4


@pytest.mark.parametrize("which", ["main", "variant"])
def test_suppressed_tokens_are_an_entry_of_the_logits_bias_not_a_node_of_their_own(marian, which) -> None:
    """The decoder's logits are one Add of a bias that holds SUPPRESSED_LOGIT at the pad id and
    final_logits_bias elsewhere; the logits test above shows the sum is exactly SUPPRESSED_LOGIT."""
    m = marian[which]
    graph = onnx.load(m.bundle / m.manifest.decoder.file).graph
    last = next(n for n in graph.node if m.manifest.decoder.output in n.output)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    assert last.op_type == "Add" and "Where" not in {n.op_type for n in graph.node}
    bias = next(inits[name] for name in last.input if name in inits).reshape(-1)
    pad = m.manifest.special_tokens.pad
    assert bias[pad] == np.float32(SUPPRESSED_LOGIT)
    expected = m.hf.final_logits_bias.numpy().reshape(-1)
    keep = np.arange(bias.size) != pad
    np.testing.assert_array_equal(bias[keep], expected[keep])


def test_greedy_tokens_equal_generate_num_beams_1(marian, test_sentences) -> None:
    m = marian["main"]
    texts = test_sentences[:24]
    expected = _generate(m, texts, num_beams=1)
    ours = greedy_tokens(m.runtime, m.manifest.special_tokens, _source_ids(m, texts), MAX_NEW)
    assert sum(len(e) for e in expected) >= 3 * len(texts), "real sequences"
    assert len({tuple(e) for e in expected}) >= len(texts) // 2, "varied sequences"
    assert sum(len(e) < MAX_NEW for e in expected) >= len(texts) // 4, "sentences ending with eos at varied lengths"
    assert ours == expected


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class HfRuleBeam(BeamSequence):
    """BeamSequence with transformers' (v5) rule for ending hypotheses, to measure the one
    difference: an eos candidate ends a hypothesis only when it ranks among the top `beam_size`
    of the step's 2 * beam_size candidates (BeamSequence takes one at any rank before it has
    `beam_size` live beams). `low_eos` counts the eos candidates the rule turned away. At the
    length limit the top `beam_size` candidates end, as transformers' max-length criterion does."""

    low_eos = 0

    def advance(self, outputs: np.ndarray, best: np.ndarray, alignments: np.ndarray | None = None) -> tuple[list[int], list[int]]:
        total = self.scores[:, None] + _log_softmax(outputs)
        vocab = total.shape[1]
        candidates = np.argsort(-total, axis=None, kind="stable")[: 2 * self.k]
        self.generated += 1
        alive: list[tuple[int, int, float]] = []
        for rank, flat in enumerate(candidates):
            parent, token = divmod(int(flat), vocab)
            score = float(total[parent, token])
            tokens = self.beams[parent] + ([] if token == self.eos else [token])
            if self.generated >= self.limit and rank < self.k:
                self.ended.append((self._normalised(score, self.generated), tokens, Finish.EOS if token == self.eos else Finish.LENGTH))
            elif token == self.eos:
                if rank < self.k:
                    self.ended.append((self._normalised(score, len(self.beams[parent]) + 1), self.beams[parent], Finish.EOS))
                else:
                    self.low_eos += 1
            elif len(alive) < self.k:
                alive.append((parent, token, score))
        if self.generated >= self.limit or len(self.ended) >= self.k:
            self.ended = sorted(self.ended, key=lambda e: -e[0])[: self.k]
            self._finish()
            return [], []
        self.beams = [self.beams[p] + [t] for p, t, _ in alive]
        self.scores = np.array([s for _, _, s in alive])
        return [p for p, _, _ in alive], [t for _, t, _ in alive]


def _beam_tokens(m: Imported, sources: list[list[int]], beam: BeamSearch, kind: type[BeamSequence] = BeamSequence) -> tuple[list[list[int]], list[BeamSequence]]:
    special = m.manifest.special_tokens
    out: list[list[int]] = [[] for _ in sources]

    def emit(row: int, token: int | None, finish: Finish | None) -> None:
        if token is not None:
            out[row].append(token)

    decoder = Decoder(m.runtime)
    sequences = [kind(special.eos, MAX_NEW, beam) for _ in sources]
    for i, seq in enumerate(sequences):
        seq.emit = partial(emit, i)
    decoder.join(sequences, sources, special.pad, np.full(len(sources), special.bos, dtype=np.int64))
    while decoder.active:
        decoder.step()
    return out, sequences


def test_beam4_tokens_equal_generate_num_beams_4_where_the_eos_rule_agrees(marian, test_sentences) -> None:
    """Beam 4, length penalty 1, `early_stopping=True` (BeamSequence's rule: stop once 4
    hypotheses ended). BeamSequence equals transformers on every sentence where no eos candidate
    ranked below the top 4; with transformers' eos rule added (HfRuleBeam) it equals it on all."""
    m = marian["main"]
    texts = test_sentences[:24]
    sources = _source_ids(m, texts)
    beam = BeamSearch(beam_size=4, length_penalty=1.0)
    expected = _generate(m, texts, num_beams=4, length_penalty=1.0, early_stopping=True)
    hf_rule, hf_sequences = _beam_tokens(m, sources, beam, HfRuleBeam)
    ours, _ = _beam_tokens(m, sources, beam)
    assert hf_rule == expected
    for i, (e, o, seq) in enumerate(zip(expected, ours, hf_sequences)):
        if seq.low_eos == 0:
            assert o == e, f"sentence {i}: no low-ranked eos, yet {o} != {e}"
    assert sum(e == o for e, o in zip(expected, ours)) >= len(texts) * 3 // 4


@torch.inference_mode()
def test_alignments_equal_transformers_cross_attentions_head_mean(marian, test_sentences) -> None:
    m = marian["main"]
    texts = test_sentences[40:46]
    sources = _source_ids(m, texts)
    src, mask = pad_batch(sources, m.manifest.special_tokens.pad, np.int64)
    prefix = torch.tensor([[m.manifest.special_tokens.bos] + list(range(5, 17))] * len(texts))
    ref = m.hf(input_ids=torch.from_numpy(src), attention_mask=torch.from_numpy(mask), decoder_input_ids=prefix,
               output_attentions=True, use_cache=False).cross_attentions[m.manifest.alignment_layer].mean(dim=1).numpy()
    rt, spec = m.runtime, m.manifest.decoder
    enc = rt.encode(src, mask)
    enc["encoder_attention_mask"] = mask
    static = {s.input: enc[s.source] for s in spec.static}
    state = {s.input: np.zeros((len(texts), m.manifest.dims["n_heads"], 0, m.manifest.dims["head_dim"]), np.float32) for s in spec.state}
    for t in range(prefix.shape[1]):
        out = rt.step({spec.feed: prefix[:, t : t + 1].numpy(), spec.position_ids: np.full((len(texts), 1), t, np.int64),
                       spec.attention_mask: np.ones((len(texts), t + 1), np.int64), **static, **state})
        state = {s.input: out[s.output] for s in spec.state}
        alignments = out[spec.alignments]  # (B, 1, S)
        assert alignments.shape == (len(texts), 1, src.shape[1])
        np.testing.assert_allclose(alignments[:, 0], ref[:, t], atol=1e-4)
        np.testing.assert_allclose(alignments[:, 0].sum(axis=-1), 1.0, atol=1e-5)
        assert (alignments[:, 0][mask == 0] == 0).all()


# --- through the server, with alignments ---------------------------------------------------------


@pytest.fixture(scope="module")
def marian_client(marian) -> Iterator[SeqcastClient]:
    """A client of a real server serving the imported bundles (the main one by default)."""
    m = marian["main"]
    server = ServerThread(ServerSettings(model_dir=m.bundle.parents[1], port=0, metrics_port=0, default_model=m.manifest.name))
    try:
        with SeqcastClient(server.target) as client:
            yield client
    finally:
        server.stop()


@torch.inference_mode()
def _hf_alignments(m: Imported, texts: list[str], outputs: list[list[int]]) -> list[np.ndarray]:
    """transformers' cross-attentions of the bundle's alignment layer, averaged over heads, with
    each text's output tokens fed (`output_attentions=True`): (output tokens, source tokens) per
    text. The padding columns, cut off here, are checked to be 0."""
    special = m.manifest.special_tokens
    enc = m.tokenizer(texts, return_tensors="pt", padding=True)
    longest = max(len(o) for o in outputs)
    # Row t is fed the token before output t (the start token first); padding after the last is
    # never attended to by earlier positions (causal self-attention).
    fed = torch.tensor([[special.bos, *o, *[special.pad] * (longest - len(o))] for o in outputs])
    attentions = m.hf(**enc, decoder_input_ids=fed, output_attentions=True, use_cache=False).cross_attentions
    mean = attentions[m.manifest.alignment_layer].mean(dim=1).numpy()
    rows = []
    for i, o in enumerate(outputs):
        real = int(enc.attention_mask[i].sum())
        assert (mean[i, : len(o), real:] == 0).all(), "padding columns"
        rows.append(mean[i, : len(o), :real])
    return rows


def _served_ids(m: Imported, result: Translation) -> list[int]:
    """The output token ids of a result, from its alignments' target tokens (SentencePiece pieces)."""
    assert result.alignments is not None
    return m.tokenizer.convert_tokens_to_ids(result.alignments.target_tokens)


def _check_alignments(m: Imported, texts: list[str], results: list[Translation]) -> None:
    """Each result's rows: one per output token, one column per real source token, summing to 1,
    and transformers' numbers for the tokens it output within 1e-4."""
    sources = _source_ids(m, texts)
    reference = _hf_alignments(m, texts, [_served_ids(m, r) for r in results])
    for source, result, expected in zip(sources, results, reference):
        a = result.alignments
        assert a is not None and a.source_tokens == m.tokenizer.convert_ids_to_tokens(source)
        weights = np.array(a.weights, dtype=np.float32).reshape(result.output_tokens, len(source))
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(weights, expected, atol=1e-4)


def test_greedy_through_the_server_equals_generate_num_beams_1_with_transformers_alignments(marian, marian_client, test_sentences) -> None:
    m = marian["main"]
    texts = test_sentences[:24]
    expected = _generate(m, texts, num_beams=1)
    results = marian_client.translate(texts, max_new_tokens=MAX_NEW, alignments=True)
    assert [_served_ids(m, r) for r in results] == expected
    assert [r.text for r in results] == m.tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert [r.text for r in marian_client.translate(texts, max_new_tokens=MAX_NEW)] == [r.text for r in results]
    assert len({len(s) for s in _source_ids(m, texts)}) > 3, "padded sources"
    _check_alignments(m, texts, results)


def test_beam4_through_the_server_equals_generate_num_beams_4_with_the_winners_alignments(marian, marian_client, test_sentences) -> None:
    """The server's tokens are the numpy loop's on every sentence, and generate's where the eos
    rule agrees (see the numpy-loop test above); the rows are the winning hypothesis' own, after
    every reorder of the beams."""
    m = marian["main"]
    texts = test_sentences[:24]
    sources = _source_ids(m, texts)
    expected = _generate(m, texts, num_beams=4, length_penalty=1.0, early_stopping=True)
    loop, _ = _beam_tokens(m, sources, BeamSearch(beam_size=4))
    _, hf_rule = _beam_tokens(m, sources, BeamSearch(beam_size=4), HfRuleBeam)
    results = marian_client.translate(texts, max_new_tokens=MAX_NEW, decoding=ClientBeamSearch(4, 1.0), alignments=True)
    assert [_served_ids(m, r) for r in results] == loop
    agree = [i for i, seq in enumerate(hf_rule) if seq.low_eos == 0]
    assert len(agree) >= 8
    assert [_served_ids(m, results[i]) for i in agree] == [expected[i] for i in agree]
    assert sum(len(_served_ids(m, r)) > 1 for r in results) >= 20, "hypotheses long enough to reorder"
    _check_alignments(m, texts, results)


def test_sampled_tokens_come_with_their_own_alignments(marian, marian_client, test_sentences) -> None:
    m = marian["main"]
    texts = test_sentences[24:30]
    sampling = ClientSampling(temperature=1.5, seed=7)
    results = marian_client.translate(texts, max_new_tokens=MAX_NEW, decoding=sampling, alignments=True)
    plain = marian_client.translate(texts, max_new_tokens=MAX_NEW, decoding=sampling)
    assert [r.text for r in results] == [r.text for r in plain]
    _check_alignments(m, texts, results)


def test_streamed_alignments_join_to_the_unary_ones(marian_client, test_sentences) -> None:
    texts = test_sentences[30:36]
    for decoding in (None, ClientBeamSearch(4)):
        unary = marian_client.translate(texts, max_new_tokens=MAX_NEW, decoding=decoding, alignments=True)
        sources: dict[int, list[list[str]]] = {i: [] for i in range(len(texts))}
        targets: dict[int, list[str]] = {i: [] for i in range(len(texts))}
        rows: dict[int, list[list[float]]] = {i: [] for i in range(len(texts))}
        for chunk in marian_client.translate_stream(texts, max_new_tokens=MAX_NEW, decoding=decoding, alignments=True):
            assert chunk.alignments is not None
            sources[chunk.index].append(chunk.alignments.source_tokens)
            targets[chunk.index] += chunk.alignments.target_tokens
            rows[chunk.index] += chunk.alignments.weights
            assert len(targets[chunk.index]) == len(rows[chunk.index]) == chunk.output_tokens
        for i, result in enumerate(unary):
            assert result.alignments is not None
            assert sources[i][0] == result.alignments.source_tokens and not any(sources[i][1:])
            assert targets[i] == result.alignments.target_tokens and rows[i] == result.alignments.weights


def test_concurrent_requests_each_return_exactly_what_they_return_alone(marian_client, test_sentences) -> None:
    """Requests of 1 to 3 texts, greedy, beam and seeded sampling, with and without alignments:
    sent together they share decoding steps, yet each gets its tokens and alignments alone."""
    decodings = [None, ClientBeamSearch(4), ClientSampling(seed=3)]
    requests = [dict(texts=test_sentences[40 + 3 * i : 41 + 3 * i + i % 3], decoding=decodings[i % 3], alignments=i % 4 != 3)
                for i in range(12)]

    def send(request: dict[str, Any]) -> list[Translation]:
        return marian_client.translate(max_new_tokens=MAX_NEW, **request)

    alone = [send(r) for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(send, requests))
    for a_results, t_results in zip(alone, together):
        for a, t in zip(a_results, t_results):
            assert (t.text, t.output_tokens, t.finish_reason) == (a.text, a.output_tokens, a.finish_reason)
            assert (a.alignments is None) == (t.alignments is None)
            if a.alignments is not None and t.alignments is not None:
                assert t.alignments.target_tokens == a.alignments.target_tokens
                np.testing.assert_allclose(t.alignments.weights, a.alignments.weights, atol=1e-6)


# --- the tokenizer --------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"%\(\w+\)s|%s|%d|\{\w*\}")
_MARKUP = re.compile(r"<[^>]+>|&\w+;")


def _tokenizer_sentences() -> list[tuple[str, str]]:
    """1,100 pairs the SentencePiece models never saw (test split, then training lines after the
    first 3,000): 300 with markup, 300 with placeholders, 300 more with non-ASCII text, 200 plain."""
    pairs = read_split(CORPUS, "test", None) + read_split(CORPUS, "train", None)[3000:]
    quota = {"markup": 300, "placeholder": 300, "non-ascii": 300, "plain": 200}
    kinds: dict[str, list[tuple[str, str]]] = {k: [] for k in quota}
    for p in pairs:
        text = p.source + p.target
        kind = ("markup" if _MARKUP.search(p.source) else "placeholder" if _PLACEHOLDER.search(p.source)
                else "non-ascii" if not text.isascii() else "plain")
        kinds[kind].append((p.source, p.target))
    return [pair for kind, group in kinds.items() for pair in group[: quota[kind]]]


@pytest.mark.parametrize("which", ["main", "variant"])
def test_converted_tokenizer_gives_marian_tokenizer_ids_and_text(marian, which) -> None:
    m = marian[which]
    pairs = _tokenizer_sentences() if which == "main" else _tokenizer_sentences()[::4]
    english, german = [e for e, _ in pairs], [d for _, d in pairs]
    if which == "main":
        assert len(pairs) >= 1000
        assert sum(bool(_PLACEHOLDER.search(e)) for e in english) >= 100
        assert sum(bool(_MARKUP.search(e)) for e in english) >= 100
        assert sum(not e.isascii() for e in english + german) >= 100
    codec = load_bundle(m.bundle, RuntimeOptions(device="cpu")).codec
    assert codec.encode(english) == m.tokenizer(english).input_ids
    # Target ids as MarianTokenizer makes them, back to text both ways, special tokens skipped.
    target_ids = m.tokenizer(text_target=german).input_ids
    assert [codec.decode(ids) for ids in target_ids] == m.tokenizer.batch_decode(target_ids, skip_special_tokens=True)
    short = [e for e in english if len(m.tokenizer(e).input_ids) <= 40][:8]  # within max_position_embeddings
    generated = _generate(m, short, num_beams=1)
    assert [codec.decode(ids) for ids in generated] == m.tokenizer.batch_decode(generated, skip_special_tokens=True)


def test_readme_serve_command_serves_the_imported_model(marian, test_sentences) -> None:
    """`seqcast serve --model-dir models --default-model <imported>`: translations through gRPC
    are transformers' greedy translations, decoded by MarianTokenizer."""
    m = marian["main"]
    texts = test_sentences[:4]
    expected = m.tokenizer.batch_decode(_generate(m, texts, num_beams=1), skip_special_tokens=True)
    server = ServerThread(ServerSettings(model_dir=m.bundle.parents[1], port=0, metrics_port=0, default_model=m.manifest.name))
    try:
        with SeqcastClient(server.target) as client:
            got = [t.text for t in client.translate(texts, max_new_tokens=MAX_NEW)]
    finally:
        server.stop()
    assert got == expected


# --- refusals ---------------------------------------------------------------------------------------


def _damaged(marian: dict[str, Imported], tmp_path: Path, damage: str) -> Path:
    directory = tmp_path / "checkpoint"
    shutil.copytree(marian["main"].checkpoint, directory)
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    if damage == "not-marian":
        config["model_type"] = "bart"
    elif damage == "missing-file":
        (directory / "source.spm").unlink()
    elif damage == "missing-weights":
        (directory / "model.safetensors").unlink()
    elif damage == "pre-layer-norm":
        config["normalize_before"] = True
    elif damage == "activation":
        config["activation_function"] = "tanh"
    config_file.write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("damage, message", [
    ("not-marian", "model_type is 'bart', not 'marian'"),
    ("missing-file", "source.spm is missing"),
    ("missing-weights", "no weights in"),
    ("pre-layer-norm", "normalize_before is True"),
    ("activation", "activation_function 'tanh' is not supported"),
])
def test_refusals_exit_1_name_the_problem_and_write_nothing(marian, tmp_path, capsys, damage, message) -> None:
    directory = _damaged(marian, tmp_path, damage)
    out = tmp_path / "models"
    code = seqcast(["--log-level", "ERROR", "import-hf", str(directory), "--name", "refused", "--out", str(out), "--no-progress"])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (out / "refused").exists()
