"""Scoring bundles on a corpus split, the way they are served, plus a retrieval baseline.

`evaluate_bundle` decodes through the server's own path (ONNX Runtime sessions checked against
the manifest, the server's greedy loop, the bundle's tokenizer), so the scores are those of
what a client receives. Over-long sources are truncated to the model's input limit for scoring
(the server itself refuses them).

`nearest_neighbour_baseline` is the trivial baseline: for each test sentence, the German side
of the most similar English training sentence (cosine similarity of character 2-4-gram TF-IDF).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sacrebleu

from seqcast.bundle.decoding import greedy_tokens
from seqcast.bundle.loading import Bundle, open_bundle
from seqcast.bundle.runtime import RuntimeOptions
from seqcast.export.translation.corpus import Pair, encode_sources, read_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    system: str
    chrf: float
    bleu: float
    sentences: int
    seconds: float

    def row(self) -> str:
        return f"| {self.system} | {self.chrf:.1f} | {self.bleu:.1f} | {self.sentences} | {self.seconds:.0f} |"


def corpus_scores(system: str, hypotheses: list[str], references: list[str], seconds: float) -> Scores:
    return Scores(
        system=system,
        chrf=sacrebleu.corpus_chrf(hypotheses, [references]).score,
        bleu=sacrebleu.corpus_bleu(hypotheses, [references]).score,
        sentences=len(references),
        seconds=seconds,
    )


def translate(model: Bundle, texts: list[str], batch_size: int = 32) -> list[str]:
    """Greedy translations of `texts` by a loaded translation model, the way the server decodes."""
    sources = encode_sources(model.codec.tokenizer, texts, model.manifest.max_source_tokens)
    log.info("translating %d texts with %s", len(texts), model.name)
    outputs = greedy_tokens(model.runtime, model.manifest.special_tokens, sources, model.manifest.max_new_tokens, batch_size)
    return [model.codec.decode(o) for o in outputs]


def translate_with_bundle(bundle_dir: Path, texts: list[str], batch_size: int = 32, threads: int = 2) -> list[str]:
    """Greedy translations of `texts` through the served path of a bundle."""
    return translate(open_bundle(bundle_dir, RuntimeOptions(device="cpu", intra_op_threads=threads)), texts, batch_size)


def evaluate_bundle(bundle_dir: Path, pairs: list[Pair]) -> Scores:
    started = time.perf_counter()
    hypotheses = translate_with_bundle(bundle_dir, [p.source for p in pairs])
    return corpus_scores(f"{bundle_dir.parent.name} v{bundle_dir.name}", hypotheses, [p.target for p in pairs], time.perf_counter() - started)


def nearest_neighbour_baseline(train: list[Pair], pairs: list[Pair]) -> Scores:
    from sklearn.feature_extraction.text import TfidfVectorizer

    started = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, dtype=np.float32)
    train_matrix = vectorizer.fit_transform([p.source for p in train])
    queries = vectorizer.transform([p.source for p in pairs])
    best = []
    for start in range(0, queries.shape[0], 256):
        similarity = queries[start : start + 256] @ train_matrix.T  # rows are L2-normalised: cosine
        best.extend(np.asarray(similarity.argmax(axis=1)).ravel().tolist())
    hypotheses = [train[i].target for i in best]
    return corpus_scores("nearest-neighbour retrieval", hypotheses, [p.target for p in pairs], time.perf_counter() - started)


def evaluate(bundles: list[Path], corpus: Sequence[Path], split: str, baseline: bool, limit: int | None = None) -> list[Scores]:
    pairs = read_split(corpus, split, limit)
    scores = [evaluate_bundle(b, pairs) for b in bundles]
    if baseline:
        scores.append(nearest_neighbour_baseline(read_split(corpus, "train"), pairs))
    return scores
