"""Writing a bundle, shared by every exporter: the export record, checksums and sizes of the
files, and the atomic move of a finished bundle into place (nothing half-written is ever served)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import onnx
import onnxruntime
import torch

from seqcast.bundle.loading import sha256
from seqcast.bundle.manifest import MANIFEST_FILE, ExportInfo, Manifest, PrecisionInfo
from seqcast.export.onnx_export import OPSET

log = logging.getLogger(__name__)


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
