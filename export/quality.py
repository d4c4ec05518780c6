"""The quality guard for precision variants: a converted bundle against the float32 bundle it came from.

Builds on the scoring code of `evaluate` (chrF and BLEU with sacrebleu, decoded through the
server's loop) and `forecast_evaluate` (MASE on held-out test windows). Both bundles are scored
on the same items the same way; past the bar the variant is refused, as export refuses a bundle
whose parity fails:

* translation: chrF on the test split may drop by at most `max_chrf_drop` points (0.5). Beside
  it, teacher-forced log-probabilities: both decoders read the reference translation in one
  step, and the log-probability each gives every reference token is compared (max and mean
  |delta log p|);
* forecast: mean MASE over the task's test windows may grow by at most `max_mase_increase`
  (0.01, that is 1% relative).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seqcast.bundle.decoding import pad_batch
from seqcast.bundle.loading import Bundle
from seqcast.bundle.manifest import Manifest, Quality
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.bundle.scaling import MeanAbsScaler
from seqcast.bundle.text import TextCodec
from seqcast.export.config import ForecastConfig, from_json
from seqcast.export.forecast.data import TASKS, forecast_task, windows
from seqcast.export.forecast.evaluate import bundle_forecasts, window_mase
from seqcast.export.translation.corpus import Pair, read_split
from seqcast.export.translation.evaluate import corpus_scores, translate

log = logging.getLogger(__name__)

DEFAULT_CORPUS = Path("data/en-de")
_REPO = Path(__file__).resolve().parents[1]


class QualityError(Exception):
    """A precision variant scored past the bar against its float32 source; it must not be written."""


@dataclass(frozen=True)
class QualityBar:
    # Translation: the most chrF points a variant may lose against its source.
    max_chrf_drop: float = 0.5
    # Forecast: the most relative MASE increase (0.01 = 1%).
    max_mase_increase: float = 0.01
    # Score only the first `limit` test sentences or windows (None: the whole split).
    limit: int | None = None
    # Translation corpus whose test split is scored (one directory or TSV file, or two aligned
    # text files); default: the source's training corpus, else data/en-de.
    corpus: tuple[Path, ...] | None = None
    threads: int = 2


def loaded(bundle_dir: Path, manifest: Manifest, threads: int) -> Bundle:
    """A bundle directory's graphs and tokenizer or scaler, as the server loads them, described by
    `manifest` (which need not be written yet: a bundle being built is checked before that)."""
    runtime = OnnxModel.from_manifest(bundle_dir, manifest, RuntimeOptions(device="cpu", intra_op_threads=threads))
    if manifest.forecast is not None:
        return Bundle(bundle_dir, manifest, runtime, None, MeanAbsScaler.from_manifest(manifest.forecast.scaling))
    return Bundle(bundle_dir, manifest, runtime, TextCodec(bundle_dir / manifest.tokenizer, manifest.special_tokens.eos), None)


def _in_checkout(path: Path) -> Path:
    """A training corpus recorded relative to the checkout, found from elsewhere too."""
    return _REPO / path if not path.is_absolute() and not path.exists() and (_REPO / path).exists() else path


def _test_pairs(manifest: Manifest, bar: QualityBar) -> tuple[Path, list[Pair]]:
    # Recorded as one path or a list of two (aligned text files); an imported bundle records none.
    recorded = manifest.training.get("corpus") or str(DEFAULT_CORPUS)
    corpus = bar.corpus or tuple(Path(p) for p in ([recorded] if isinstance(recorded, str) else recorded))
    corpus = tuple(_in_checkout(p) for p in corpus)
    try:
        pairs = read_split(corpus, "test", bar.limit)
    except ValueError as e:
        raise QualityError(f"no test split to check quality against: {e}; pass --corpus with a "
                           f"{manifest.source_language}-{manifest.target_language} corpus") from None
    return corpus[0], pairs


def _initial_feeds(model: Bundle, sources: list[list[int]]) -> dict[str, np.ndarray]:
    """Decoder inputs for a batch of sources before the first step: encoder outputs, and empty
    (KV cache) or encoder-made (RNN) state."""
    manifest, spec = model.manifest, model.manifest.decoder
    src, mask = pad_batch(sources, manifest.special_tokens.pad, np.int64)
    encoded = model.runtime.encode(src, mask)
    encoded[manifest.encoder.attention_mask] = mask
    shapes = {t.name: t.shape for t in spec.inputs}
    feeds = {s.input: encoded[s.source] for s in spec.static}
    for s in spec.state:
        if s.init == "encoder":
            feeds[s.input] = encoded[s.source]
        else:
            dims = [len(sources) if a == 0 else 0 if a == s.seq_axis else d for a, d in enumerate(shapes[s.input])]
            feeds[s.input] = np.zeros(dims, dtype=np.float32)
    return feeds


def _step(model: Bundle, feeds: dict[str, np.ndarray], tokens: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """One decoder call on new `tokens` (B, n); `mask` (B, past + n) covers past and new."""
    spec = model.manifest.decoder
    past = mask.shape[1] - tokens.shape[1]
    feeds[spec.feed] = tokens
    if spec.position_ids:
        feeds[spec.position_ids] = np.tile(np.arange(past, mask.shape[1], dtype=np.int64), (len(tokens), 1))
    if spec.attention_mask:
        feeds[spec.attention_mask] = mask
    return model.runtime.step(feeds)


def reference_logps(
    model: Bundle, sources: list[list[int]], targets: list[list[int]], one_call: bool | None = None
) -> list[np.ndarray]:
    """log p of each target token, (T_i,) per pair, with the reference prefix fed (teacher
    forcing: bos + target[:-1] in, target out). Where the graph takes several new tokens
    (transformers) the whole padded prefix goes in one decoder call (pads at the end, which
    causal attention never lets earlier positions see); else one step per token carrying the
    state (RNNs). `one_call` forces either."""
    spec = model.manifest.decoder
    special = model.manifest.special_tokens
    prefixes, mask = pad_batch([[special.bos, *t[:-1]] for t in targets], special.pad, np.int64)
    if one_call is None:
        one_call = isinstance(next(t for t in spec.inputs if t.name == spec.feed).shape[1], str)
    feeds = _initial_feeds(model, sources)
    if one_call:
        logits = _step(model, feeds, prefixes, mask)[spec.output]  # (B, T, vocab)
    else:
        columns = []
        for t in range(prefixes.shape[1]):
            out = _step(model, feeds, prefixes[:, t : t + 1], np.ones((len(targets), t + 1), dtype=np.int64))
            columns.append(out[spec.output][:, -1])
            feeds.update({s.input: out[s.output] for s in spec.state})
        logits = np.stack(columns, axis=1)
    out = []
    for i, target in enumerate(targets):
        rows = logits[i, : len(target)]  # (T_i, vocab)
        top = rows.max(axis=-1)
        log_sum = top + np.log(np.exp(rows - top[:, None]).sum(axis=-1))
        out.append(rows[np.arange(len(target)), target].astype(np.float64) - log_sum)
    return out


def _token_ids(model: Bundle, text: str, limit: int) -> list[int]:
    ids = model.codec.tokenizer.encode(text, add_special_tokens=False).ids
    return ids[: limit - 1] + [model.manifest.special_tokens.eos]


def teacher_forced_deltas(reference: Bundle, candidate: Bundle, pairs: list[Pair], batch: int = 1) -> np.ndarray:
    """|log p_reference - log p_candidate| of every reference token of every pair (teacher forced).

    One sentence per call by default: the per-call int8 forms (`--int8-form qint8-per-tensor` and
    the like) quantize activations with one scale for the whole batch, so in a batch a sentence's
    figures depend on its batch-mates (the max came out 0.46 in batches of 32 against 0.74 alone
    on the en-de test split). The default per-row form gives the same figures either way."""
    manifest = reference.manifest
    encoded = [(_token_ids(reference, p.source, manifest.max_source_tokens), _token_ids(reference, p.target, manifest.max_new_tokens))
               for p in pairs]
    encoded.sort(key=lambda st: (len(st[1]), len(st[0])))  # batches of similar lengths: little padding
    deltas = []
    with tqdm(total=len(pairs), desc="teacher-forced log p", unit="sentence", leave=False) as progress:
        for start in range(0, len(encoded), batch):
            chunk = encoded[start : start + batch]
            sources, targets = [s for s, _ in chunk], [t for _, t in chunk]
            pairs_logp = zip(reference_logps(reference, sources, targets), reference_logps(candidate, sources, targets))
            deltas.extend(np.abs(a - b) for a, b in pairs_logp)
            progress.update(len(chunk))
    return np.concatenate(deltas)


def translation_quality(reference: Bundle, candidate: Bundle, bar: QualityBar) -> Quality:
    corpus, pairs = _test_pairs(reference.manifest, bar)
    references = [p.target for p in pairs]
    scores = []
    for model in (reference, candidate):
        started = time.perf_counter()
        hypotheses = translate(model, [p.source for p in pairs])
        scores.append(corpus_scores(model.name, hypotheses, references, time.perf_counter() - started))
    deltas = teacher_forced_deltas(reference, candidate, pairs)
    return Quality(
        metric="chrF",
        bar=bar.max_chrf_drop,
        split=f"{corpus.relative_to(_REPO) if corpus.is_relative_to(_REPO) else corpus}/test",
        items=len(pairs),
        subset=bar.limit is not None and len(pairs) >= bar.limit,
        reference=round(scores[0].chrf, 3),
        value=round(scores[1].chrf, 3),
        passed=scores[0].chrf - scores[1].chrf <= bar.max_chrf_drop,
        bleu_reference=round(scores[0].bleu, 3),
        bleu=round(scores[1].bleu, 3),
        max_abs_delta_logp=float(deltas.max()),
        mean_abs_delta_logp=float(deltas.mean()),
        teacher_forced_tokens=int(deltas.size),
    )


def forecast_quality(reference: Bundle, candidate: Bundle, bar: QualityBar) -> Quality:
    training = reference.manifest.training
    data = str(training.get("data") or "")
    if data not in [*TASKS, "csv"]:
        raise QualityError(f"the source bundle names no known forecast data set (training.data = {data!r}); "
                           f"known: {[*sorted(TASKS), 'csv']}")
    # The training config rebuilds the task (a CSV run's file and settings); older bundles name the data only.
    task = forecast_task(from_json(ForecastConfig, training.get("config") or {"data": data}))
    series = task.load()
    items = windows(task, series, "test")[: bar.limit]
    mean = [
        float(window_mase(task, items, series.season_length, bundle_forecasts(m, items, task.horizon).point).mean())
        for m in (reference, candidate)
    ]
    return Quality(
        metric="MASE",
        bar=bar.max_mase_increase,
        split=f"{task.name} test windows",
        items=len(items),
        subset=bar.limit is not None and len(items) >= bar.limit,
        reference=mean[0],
        value=mean[1],
        passed=mean[1] <= mean[0] * (1 + bar.max_mase_increase),
    )


def describe(quality: Quality) -> str:
    if quality.metric == "chrF":
        return (
            f"chrF {quality.value:.2f} against {quality.reference:.2f} for float32 (drop {quality.reference - quality.value:+.2f}, "
            f"bar {quality.bar}), BLEU {quality.bleu:.2f} against {quality.bleu_reference:.2f}, "
            f"teacher-forced max |delta log p| {quality.max_abs_delta_logp:.3f} (mean {quality.mean_abs_delta_logp:.4f}) "
            f"on {quality.items} sentences of {quality.split}"
        )
    change = quality.value / quality.reference - 1 if quality.reference else float("inf")
    return (
        f"MASE {quality.value:.4f} against {quality.reference:.4f} for float32 ({change:+.2%}, bar {quality.bar:.0%}) "
        f"on {quality.items} windows of {quality.split}"
    )


def check_quality(reference: Bundle, candidate: Bundle, bar: QualityBar) -> Quality:
    """Scores both; raises QualityError with the figures when the candidate is past the bar."""
    started = time.perf_counter()
    check = forecast_quality if reference.manifest.task == "forecast" else translation_quality
    quality = check(reference, candidate, bar)
    log.info("quality %s: %s (%.0f s)", "ok" if quality.passed else "FAILED", describe(quality), time.perf_counter() - started)
    if not quality.passed:
        raise QualityError(f"quality guard failed: {describe(quality)}")
    return quality
