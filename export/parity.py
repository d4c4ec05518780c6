"""Parity checks run at export: ONNX Runtime against PyTorch, and cached against uncached decoding.

Two kinds of evidence, both written into the manifest:
  * graph parity: the encoder and one decoder step on the same inputs, over several batch sizes,
    padded source lengths and past lengths (0, 1 and more than 10, with holes in the cache mask
    as in-flight batching makes them); max abs difference of every output;
  * token parity: greedy decoding of real sentences three ways (PyTorch recomputing the whole
    prefix at every step, PyTorch with the cache, ONNX Runtime with the cache through the
    server's decoding loop) must give exactly the same tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqcast.bundle.decoding import greedy_tokens
from seqcast.bundle.manifest import Parity, SpecialTokens, TensorSpec
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.export.graphs import GraphPair, TorchRuntime, sample_inputs

log = logging.getLogger(__name__)

TOLERANCE = 1e-4


class ParityError(Exception):
    """The exported graphs do not reproduce PyTorch; the bundle must not be written."""


@dataclass
class ParityReport:
    tolerance: float
    max_abs_diff_encoder: float = 0.0
    max_abs_diff_decoder: float = 0.0
    cases: int = 0
    sentences: int = 0
    cached_matches_uncached: bool = False
    onnx_matches_pytorch: bool = False
    max_abs_diff_forecast_scaled: float | None = None
    max_abs_diff_forecast_data: float | None = None
    max_abs_diff_cached_uncached: float | None = None
    max_abs_diff_source_model: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_manifest(self) -> Parity:
        return Parity(
            tolerance=self.tolerance,
            max_abs_diff_encoder=self.max_abs_diff_encoder,
            max_abs_diff_decoder=self.max_abs_diff_decoder,
            cases=self.cases,
            sentences=self.sentences,
            cached_matches_uncached=self.cached_matches_uncached,
            onnx_matches_pytorch=self.onnx_matches_pytorch,
            max_abs_diff_forecast_scaled=self.max_abs_diff_forecast_scaled,
            max_abs_diff_forecast_data=self.max_abs_diff_forecast_data,
            max_abs_diff_cached_uncached=self.max_abs_diff_cached_uncached,
            max_abs_diff_source_model=self.max_abs_diff_source_model,
        )


@dataclass(frozen=True)
class Case:
    batch: int
    source_length: int
    past_length: int
    new_tokens: int = 1


def default_cases(stateful_cache: bool) -> list[Case]:
    """Batch sizes 1, 3, 8; past lengths 0, 1, 12 (KV caches) and a 4-token prefix step."""
    cases = [Case(b, s, p) for b, s in ((1, 6), (3, 11), (8, 17)) for p in ((0, 1, 12) if stateful_cache else (0,))]
    if stateful_cache:
        cases.append(Case(3, 9, 0, new_tokens=4))
    return cases


def _case_inputs(specs: list[TensorSpec], case: Case, vocab: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    sizes = {
        "batch": case.batch,
        "source_length": case.source_length,
        "new_tokens": case.new_tokens,
        "past_length": case.past_length,
        "past_and_new": case.past_length + case.new_tokens,
    }
    return sample_inputs(specs, sizes, vocab, rng)


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) if a[k].size else 0.0 for k in a)


def graph_parity(torch_rt: TorchRuntime, onnx_rt: OnnxModel, vocab: int, cases: list[Case], report: ParityReport) -> None:
    rng = np.random.default_rng(0)
    graphs = torch_rt.graphs
    for case in cases:
        enc_in = _case_inputs(graphs.encoder_spec.inputs, case, vocab, rng)
        ids, mask = enc_in[graphs.encoder_spec.source], enc_in[graphs.encoder_spec.attention_mask]
        enc_diff = _max_diff(torch_rt.encode(ids, mask), onnx_rt.encode(ids, mask))
        feeds = _case_inputs(graphs.decoder_spec.inputs, case, vocab, rng)
        step_diff = _max_diff(torch_rt.step(feeds), onnx_rt.step(feeds))
        report.max_abs_diff_encoder = max(report.max_abs_diff_encoder, enc_diff)
        report.max_abs_diff_decoder = max(report.max_abs_diff_decoder, step_diff)
        report.cases += 1
        log.info("parity %s: encoder %.2e, decoder step %.2e", case, enc_diff, step_diff)
        if enc_diff > report.tolerance or step_diff > report.tolerance:
            report.problems.append(f"{case}: encoder diff {enc_diff:.2e}, decoder diff {step_diff:.2e} > {report.tolerance:.0e}")


@torch.inference_mode()
def greedy_uncached(model: nn.Module, source: list[int], special: SpecialTokens, max_new_tokens: int) -> list[int]:
    """Greedy decoding of one source with no cache: the whole prefix is recomputed at every step."""
    src = torch.tensor([source])
    mask = torch.ones_like(src)
    prefix = [special.bos]
    for _ in range(max_new_tokens):
        token = int(model(src, mask, torch.tensor([prefix]))[0, -1].argmax())
        if token == special.eos:
            break
        prefix.append(token)
    return prefix[1:]


def token_parity(
    model: nn.Module,
    torch_rt: TorchRuntime,
    onnx_rt: OnnxModel,
    special: SpecialTokens,
    sources: list[list[int]],
    max_new_tokens: int,
    report: ParityReport,
) -> None:
    uncached = [greedy_uncached(model, s, special, max_new_tokens) for s in sources]
    cached = greedy_tokens(torch_rt, special, sources, max_new_tokens)
    onnx = greedy_tokens(onnx_rt, special, sources, max_new_tokens)
    report.sentences = len(sources)
    report.cached_matches_uncached = cached == uncached
    report.onnx_matches_pytorch = onnx == uncached
    for i, (u, c, o) in enumerate(zip(uncached, cached, onnx)):
        if not (u == c == o):
            report.problems.append(f"sentence {i}: uncached {u[:12]}..., cached {c[:12]}..., onnx {o[:12]}...")


def check_parity(
    model: nn.Module,
    graphs: GraphPair,
    bundle_dir: Path,
    special: SpecialTokens,
    vocab: int,
    sources: list[list[int]],
    max_new_tokens: int = 64,
    tolerance: float = TOLERANCE,
) -> ParityReport:
    """Runs both checks on the graphs in bundle_dir; raises ParityError listing every failure."""
    model.eval()
    report = ParityReport(tolerance=tolerance)
    torch_rt = TorchRuntime(graphs)
    onnx_rt = OnnxModel(bundle_dir, graphs.encoder_spec, graphs.decoder_spec, RuntimeOptions(device="cpu"))
    kv_cache = any(s.seq_axis is not None for s in graphs.decoder_spec.state)
    graph_parity(torch_rt, onnx_rt, vocab, default_cases(kv_cache), report)
    token_parity(model, torch_rt, onnx_rt, special, sources, max_new_tokens, report)
    if not report.ok:
        raise ParityError("export parity failed:\n  " + "\n  ".join(report.problems))
    return report
