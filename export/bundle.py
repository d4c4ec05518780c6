"""Turning a trained run into a bundle: graphs, tokenizer, parity figures, checksums, manifest.

The bundle is assembled in a temporary directory beside its destination and moved into place
only after every check passed, so a failed export never leaves a half-written bundle where the
server would look.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from datetime import datetime, timezone
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import onnxruntime
import torch

from seqcast.bundle.loading import sha256
from seqcast.bundle.manifest import MANIFEST_FILE, ExportInfo, Manifest, PrecisionInfo
from seqcast.export.corpus import encode_sources, read_split
from seqcast.export.graphs import graphs_for
from seqcast.export.onnx_export import OPSET, export_pair, round_weights_fp16
from seqcast.export.parity import TOLERANCE, check_parity
from seqcast.export.train import SPECIAL, load_model
from seqcast.export.transformer import Transformer

log = logging.getLogger(__name__)

PARITY_SENTENCES = 24


def _dims(model: torch.nn.Module) -> dict[str, int]:
    cfg = model.cfg.to_dict()
    keep = ("vocab_size", "d_model", "n_heads", "encoder_layers", "decoder_layers", "d_ff", "embed_dim", "hidden", "attention_dim")
    dims = {k: int(v) for k, v in cfg.items() if k in keep}
    if isinstance(model, Transformer):
        dims["head_dim"] = model.cfg.head_dim
    return dims


def export_info(weights_dtype: str) -> ExportInfo:
    return ExportInfo(
        torch=torch.__version__,
        onnx=onnx.__version__,
        onnxruntime=onnxruntime.__version__,
        opset=OPSET,
        weights_dtype=weights_dtype,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def checksums(work: Path) -> dict[str, str]:
    """sha256 of every file of a bundle directory but the manifest."""
    return {f.name: sha256(f) for f in sorted(work.iterdir()) if f.name != MANIFEST_FILE}


def file_sizes(work: Path) -> dict[str, int]:
    """Bytes of every file of a bundle directory but the manifest."""
    return {f.name: f.stat().st_size for f in sorted(work.iterdir()) if f.name != MANIFEST_FILE}


def exported_precision(work: Path, weights_dtype: str) -> PrecisionInfo:
    """The precision section of a bundle straight from export: float32 compute."""
    stored = "weights stored as float16, computed in float32" if weights_dtype == "float16" else "float32 weights"
    return PrecisionInfo(precision="fp32", method=f"exported ({stored})", file_sizes=file_sizes(work))


def write_bundle(destination: Path, overwrite: bool, build: Callable[[Path], Manifest]) -> Path:
    """Runs `build(work_dir)` (write the graphs and files, check them, return the manifest) in a
    temporary directory beside `destination`, then moves the finished bundle into place."""
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} exists; choose another --version or pass --overwrite")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=f".{destination.name}-") as tmp:
        work = Path(tmp)
        build(work).write(work)
        if destination.exists():
            shutil.rmtree(destination)
        work.rename(destination)
        # TemporaryDirectory cleanup expects the folder; leave an empty one for it to remove.
        work.mkdir()
    log.info("bundle written to %s", destination)
    return destination


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
        sources = encode_sources(tokenizer, [p.en for p in test], cfg.max_tokens)
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
                "best_dev_loss": metrics.get("best_dev_loss"),
                "test_pytorch": metrics.get("test"),
            },
        )

    return write_bundle(models_dir / name / version, overwrite, build)
