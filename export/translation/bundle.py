"""Turning a trained translation run into a bundle: graphs, tokenizer, parity figures, manifest.

The bundle is assembled by `seqcast.export.writing` in a temporary directory beside its
destination and moved into place only after every check passed, so a failed export never leaves
a half-written bundle where the server would look.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from seqcast.bundle.manifest import Manifest
from seqcast.export.graphs import graphs_for
from seqcast.export.onnx_export import export_pair, round_weights_fp16
from seqcast.export.parity import TOLERANCE, check_parity
from seqcast.export.transformer import Transformer
from seqcast.export.translation.corpus import encode_sources, read_split
from seqcast.export.translation.train import SPECIAL, load_model
from seqcast.export.writing import checksums, export_info, exported_precision, write_bundle

log = logging.getLogger(__name__)

PARITY_SENTENCES = 24


def _dims(model: torch.nn.Module) -> dict[str, int]:
    cfg = model.cfg.to_dict()
    keep = ("vocab_size", "d_model", "n_heads", "encoder_layers", "decoder_layers", "d_ff", "embed_dim", "hidden", "attention_dim")
    dims = {k: int(v) for k, v in cfg.items() if k in keep}
    if isinstance(model, Transformer):
        dims["head_dim"] = model.cfg.head_dim
    return dims


def export_bundle(
    run_dir: Path,
    models_dir: Path,
    name: str,
    version: str,
    corpus: Sequence[Path] | None = None,
    max_new_tokens: int = 128,
    tolerance: float = TOLERANCE,
    overwrite: bool = False,
) -> Path:
    """Exports the best checkpoint of a translation run to models_dir/name/version."""
    model, cfg, tokenizer = load_model(run_dir)
    corpus = list(corpus or cfg.corpus_paths())
    round_weights_fp16(model)
    graphs = graphs_for(model)

    def build(work: Path) -> Manifest:
        export_pair(graphs, work, cfg.vocab_size)
        shutil.copy(run_dir / "tokenizer.json", work / "tokenizer.json")
        test = read_split(corpus, "test", PARITY_SENTENCES)
        sources = encode_sources(tokenizer, [p.source for p in test], cfg.max_tokens)
        report = check_parity(model, graphs, work, SPECIAL, cfg.vocab_size, sources, tolerance=tolerance)
        log.info(
            "parity ok: encoder %.2e, decoder %.2e over %d cases; %d sentences decoded identically",
            report.max_abs_diff_encoder, report.max_abs_diff_decoder, report.cases, report.sentences,
        )
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        return Manifest(
            name=name,
            version=version,
            task="translation",
            architecture=cfg.architecture,
            dims=_dims(model),
            special_tokens=SPECIAL,
            tokenizer="tokenizer.json",
            alignment_layer=getattr(graphs.decoder, "alignment_layer", None),  # transformers only
            source_language=cfg.source_language,
            target_language=cfg.target_language,
            max_source_tokens=cfg.max_tokens,
            max_new_tokens=max_new_tokens,
            encoder=graphs.encoder_spec,
            decoder=graphs.decoder_spec,
            files=checksums(work),
            export=export_info("float16"),
            parity=report.to_manifest(),
            precision=exported_precision(work, "float16"),
            training={
                "corpus": str(corpus[0]) if len(corpus) == 1 else [str(p) for p in corpus],
                "config": json.loads((run_dir / "config.json").read_text()),
                "steps": metrics.get("steps"),
                "seconds": metrics.get("seconds"),
                "best_dev_loss": metrics.get("best_dev_loss"),
                "test_pytorch": metrics.get("test"),
            },
        )

    return write_bundle(models_dir / name / version, overwrite, build)
