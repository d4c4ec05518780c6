"""`seqcast import-hf`: a local Hugging Face Marian checkpoint in, an ordinary seqcast bundle out.

Builds on `hf_checkpoint` (read and refuse), `marian` (export wrappers), `marian_tokenizer`
(tokenizer conversion), `onnx_export` (graphs), `parity` (graph parity) and `bundle`
(checksums, the temporary directory moved into place at the end). Weights stay float32: an
imported model is compared with transformers' own to 1e-4, and float16 storage would move
logits further than that.

Parity, written into the manifest:
  * graph parity: the wrappers in PyTorch against ONNX Runtime over batch sizes, padded
    sources and past lengths 0, 1 and 12, cache holes included;
  * source-model parity: ONNX Runtime decoding step by step with its cache against
    `MarianMTModel`'s own forward pass over the whole prefix, on real sentences;
  * token parity: greedy decoding by `MarianMTModel` recomputing the prefix each step, by the
    wrappers with their cache, and by ONNX Runtime through the server's loop, identical.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from seqcast.bundle.decoding import greedy_tokens, pad_batch
from seqcast.bundle.loading import sha256
from seqcast.bundle.manifest import ImportSource, Manifest, SpecialTokens
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.export.graphs import GraphPair, TorchRuntime
from seqcast.export.onnx_export import export_graph
from seqcast.export.parity import TOLERANCE, ParityError, ParityReport, default_cases, graph_parity
from seqcast.export.translation.hf_checkpoint import MarianCheckpoint, load_model, read_checkpoint
from seqcast.export.translation.marian import SUPPRESSED_LOGIT, marian_graphs
from seqcast.export.translation.marian_tokenizer import SOURCE_FILE, TARGET_FILE, convert_tokenizers
from seqcast.export.writing import checksums, export_info, write_bundle

log = logging.getLogger(__name__)

# Source sentences for the token and logits checks: the checkpoint comes without data, so a
# fixed set of short texts (placeholders, markup, non-ASCII included) exercises it.
PARITY_TEXTS = [
    "The file could not be saved.", "Delete the selected items?", "Open settings", "Your password has expired.",
    "%(count)s files were uploaded.", "Click <b>Save</b> to keep your changes.", "Page {0} of {1}",
    "The server returned an error: %s", "Größe ändern", "Add a new user", "Search results for “%(query)s”",
    "Are you sure you want to log out?", "No items found.", "Download the report as PDF.", "Welcome back!",
    "This field is required.", "Invalid e-mail address.", "Last modified on %(date)s", "Show more", "Cancel",
    "The connection timed out after 30 seconds.", "Select a language", "Copy link to clipboard", "Résumé",
]
PARITY_NEW_TOKENS = 32


def _special(checkpoint: MarianCheckpoint) -> SpecialTokens:
    gen = checkpoint.generation
    return SpecialTokens(pad=gen.pad, bos=gen.decoder_start, eos=gen.eos)


def _mask_suppressed(logits: np.ndarray, suppressed: tuple[int, ...]) -> np.ndarray:
    logits = logits.copy()
    logits[..., list(suppressed)] = SUPPRESSED_LOGIT
    return logits


@torch.inference_mode()
def hf_greedy_uncached(hf_model: Any, sources: list[list[int]], special: SpecialTokens, suppressed: tuple[int, ...], max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding with `MarianMTModel.forward` over the whole prefix at every step, no cache;
    all sources as one right-padded batch (rows that ended run on, their tokens ignored)."""
    src, mask = (torch.from_numpy(a) for a in pad_batch(sources, special.pad, np.int64))
    prefix = torch.full((len(sources), 1), special.bos, dtype=torch.int64)
    out: list[list[int]] = [[] for _ in sources]
    done = np.zeros(len(sources), dtype=bool)
    for _ in range(max_new_tokens):
        logits = hf_model(input_ids=src, attention_mask=mask, decoder_input_ids=prefix, use_cache=False).logits[:, -1]
        tokens = _mask_suppressed(logits.numpy(), suppressed).argmax(axis=-1)
        for i, token in enumerate(tokens.tolist()):
            if not done[i]:
                done[i] = token == special.eos
                if not done[i]:
                    out[i].append(token)
        if done.all():
            break
        prefix = torch.cat([prefix, torch.from_numpy(tokens)[:, None]], dim=1)
    return out


@torch.inference_mode()
def source_model_diff(hf_model: Any, onnx_rt: OnnxModel, sources: list[list[int]], prefixes: list[list[int]], suppressed: tuple[int, ...]) -> float:
    """Max abs difference between ONNX Runtime's cached logits, one step at a time from past
    length 0, and `MarianMTModel`'s logits over the whole prefix, for padded batched sources.

    prefixes: per source the decoder tokens (start token first); the first `min(len)` are fed.
    """
    length = min(len(p) for p in prefixes)
    src, mask = pad_batch(sources, 0, np.int64)
    tgt = torch.tensor([p[:length] for p in prefixes])
    reference = hf_model(input_ids=torch.from_numpy(src), attention_mask=torch.from_numpy(mask), decoder_input_ids=tgt, use_cache=False).logits.numpy()
    reference = _mask_suppressed(reference, suppressed)
    enc = onnx_rt.encode(src, mask)
    enc["encoder_attention_mask"] = mask
    spec = onnx_rt.decoder_spec
    static = {s.input: enc[s.source] for s in spec.static}
    shapes = {t.name: t.shape for t in spec.inputs}
    state = {s.input: np.zeros([len(sources), shapes[s.input][1], 0, shapes[s.input][3]], np.float32) for s in spec.state}
    worst = 0.0
    for t in range(length):
        feeds = {spec.feed: tgt[:, t : t + 1].numpy(), spec.position_ids: np.full((len(sources), 1), t, np.int64),
                 spec.attention_mask: np.ones((len(sources), t + 1), np.int64), **static, **state}
        out = onnx_rt.step(feeds)
        state = {s.input: out[s.output] for s in spec.state}
        worst = max(worst, float(np.abs(out[spec.output][:, 0] - reference[:, t]).max()))
    return worst


def check_import_parity(
    hf_model: Any, checkpoint: MarianCheckpoint, graphs: GraphPair, bundle_dir: Path, source_tokenizer: Tokenizer, tolerance: float,
    progress: Callable[[str], None],
) -> ParityReport:
    """The three checks of the module docstring; raises ParityError listing every failure."""
    report = ParityReport(tolerance=tolerance)
    torch_rt = TorchRuntime(graphs)
    onnx_rt = OnnxModel(bundle_dir, graphs.encoder_spec, graphs.decoder_spec, RuntimeOptions(device="cpu"))
    special, suppressed = _special(checkpoint), checkpoint.generation.suppressed
    vocab = min(checkpoint.encoder_vocab_size, checkpoint.decoder_vocab_size)

    progress("graph parity")
    graph_parity(torch_rt, onnx_rt, vocab, default_cases(stateful_cache=True), report)

    progress("greedy tokens vs transformers")
    sources = [e.ids + [special.eos] for e in source_tokenizer.encode_batch(PARITY_TEXTS, add_special_tokens=False)]
    uncached = hf_greedy_uncached(hf_model, sources, special, suppressed, PARITY_NEW_TOKENS)
    cached = greedy_tokens(torch_rt, special, sources, PARITY_NEW_TOKENS)
    served = greedy_tokens(onnx_rt, special, sources, PARITY_NEW_TOKENS)
    report.sentences = len(sources)
    report.cached_matches_uncached = cached == uncached
    report.onnx_matches_pytorch = served == uncached
    for i, (u, c, o) in enumerate(zip(uncached, cached, served)):
        if not (u == c == o):
            report.problems.append(f"sentence {i}: transformers {u[:12]}..., cached {c[:12]}..., onnx {o[:12]}...")

    progress("logits vs transformers")
    prefixes = [[special.bos] + (u + [special.eos] * 12)[:12] for u in uncached]
    diff = max(source_model_diff(hf_model, onnx_rt, sources[i : i + 8], prefixes[i : i + 8], suppressed) for i in range(0, len(sources), 8))
    report.max_abs_diff_source_model = diff
    if diff > tolerance:
        report.problems.append(f"logits differ from transformers' MarianMTModel by {diff:.2e} > {tolerance:.0e}")
    if not report.ok:
        raise ParityError("import parity failed:\n  " + "\n  ".join(report.problems))
    return report


def _source_info(checkpoint: MarianCheckpoint) -> ImportSource:
    names = ["config.json", "generation_config.json", checkpoint.weights_file, "source.spm", "target.spm", "vocab.json",
             "target_vocab.json", "tokenizer_config.json"]
    return ImportSource(
        framework="huggingface",
        model_type="marian",
        name_or_path=getattr(checkpoint.config, "_name_or_path", None) or None,
        directory=str(checkpoint.directory.resolve()),
        files={n: sha256(checkpoint.directory / n) for n in names if (checkpoint.directory / n).is_file()},
    )


def _dims(checkpoint: MarianCheckpoint) -> dict[str, int]:
    cfg = checkpoint.config
    return {
        "vocab_size": checkpoint.decoder_vocab_size,
        "source_vocab_size": checkpoint.encoder_vocab_size,
        "d_model": cfg.d_model,
        "n_heads": cfg.decoder_attention_heads,
        "head_dim": cfg.d_model // cfg.decoder_attention_heads,
        "encoder_layers": cfg.encoder_layers,
        "decoder_layers": cfg.decoder_layers,
        "d_ff": cfg.decoder_ffn_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
    }


def import_marian(
    checkpoint_dir: Path,
    models_dir: Path,
    name: str,
    version: str = "1",
    alignment_layer: int | None = None,
    max_new_tokens: int | None = None,
    tolerance: float = TOLERANCE,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """Imports a MarianMTModel checkpoint directory as models_dir/name/version.

    Raises ImportRefused (nothing written) for a directory it cannot honour, ParityError when
    the exported graphs do not reproduce transformers, FileExistsError for an existing bundle.
    """
    checkpoint = read_checkpoint(checkpoint_dir)
    source_tok, target_tok = convert_tokenizers(checkpoint.directory, checkpoint.separate_vocabs)
    hf_model = load_model(checkpoint)
    graphs = marian_graphs(hf_model, checkpoint, alignment_layer)
    cfg = checkpoint.config
    limit = max_new_tokens or min(checkpoint.generation.max_length - 1, cfg.max_position_embeddings)
    if not 1 <= limit <= cfg.max_position_embeddings:
        raise ValueError(f"--max-new-tokens {limit} must lie in 1..{cfg.max_position_embeddings} (max_position_embeddings)")

    def build(work: Path) -> Manifest:
        with tqdm(total=6, desc=f"import {name}", unit="step", leave=False, disable=not show_progress) as bar:
            def progress(step: str) -> None:
                bar.set_postfix_str(step)
                bar.update(1)

            progress("tokenizer")
            source_tok.save(str(work / SOURCE_FILE))
            target_tok.save(str(work / TARGET_FILE))
            vocab = min(checkpoint.encoder_vocab_size, checkpoint.decoder_vocab_size)
            for module, spec in ((graphs.encoder, graphs.encoder_spec), (graphs.decoder, graphs.decoder_spec)):
                progress(spec.file)
                export_graph(module, spec.inputs, spec.outputs, work / spec.file, vocab, weights_fp16=False)
            report = check_import_parity(hf_model, checkpoint, graphs, work, source_tok, tolerance, progress)
        log.info(
            "parity ok: encoder %.2e, decoder %.2e, against transformers %.2e; %d sentences decoded identically",
            report.max_abs_diff_encoder, report.max_abs_diff_decoder, report.max_abs_diff_source_model, report.sentences,
        )
        return Manifest(
            name=name,
            version=version,
            task="translation",
            architecture="marian",
            dims=_dims(checkpoint),
            special_tokens=_special(checkpoint),
            tokenizer=SOURCE_FILE,
            target_tokenizer=TARGET_FILE,
            max_source_tokens=cfg.max_position_embeddings,
            max_new_tokens=limit,
            alignment_layer=graphs.decoder.alignment_layer,
            encoder=graphs.encoder_spec,
            decoder=graphs.decoder_spec,
            files=checksums(work),
            export=export_info("float32"),
            parity=report.to_manifest(),
            source=_source_info(checkpoint),
        )

    destination = Path(models_dir) / name / version
    created_parent = not destination.parent.exists()
    try:
        return write_bundle(destination, overwrite, build)
    except BaseException:
        if created_parent and destination.parent.is_dir() and not any(destination.parent.iterdir()):
            destination.parent.rmdir()  # leave no empty model folder behind a failed import
        raise
