"""Precision variants of whole bundles: an int8 (CPU) or fp16 (CUDA) bundle made from a float32 one.

Builds on `quantize` (one graph at a time), `quality` (the guard against the source bundle) and
`bundle.write_bundle` (assembled beside the destination, moved into place only when every check
passed). Works on any bundle that follows the contract, exported or imported: the graphs are
converted, the other files (tokenizer) copied, the manifest carried over with the new files'
checksums and a `precision` section saying how the bundle was made, what was quantized and how
it scored. The parity section stays the float32 source's: it describes the export the variant
was made from.

fp16 bundles are meant for the CUDA execution provider and marked CUDA-only: on CPU, ONNX
Runtime runs many float16 ops by converting to float32 and back, which is slower than the float32
bundle. Where the CPU provider loads them, they are checked against the manifest and their
quality is measured there (same guard as int8); where it does not, onnx.checker is the check.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from seqcast.bundle.loading import verify_bundle
from seqcast.bundle.manifest import Manifest, PrecisionInfo
from seqcast.bundle.runtime import BundleMismatch
from seqcast.export.quality import QualityBar, check_quality, loaded
from seqcast.export.quantize import DEFAULT_INT8_FORM, FP16_METHOD, PRECISIONS, GraphConversion, Precision, convert_graph, int8_method
from seqcast.export.writing import checksums, export_info, file_sizes, write_bundle

log = logging.getLogger(__name__)

_WEIGHTS_DTYPE = {"int8": "int8", "fp16": "float16", "fp32": "float32"}
# What each precision is made and checked for: int8 kernels are CPU kernels (MatMulInteger and
# friends), fp16 pays off on CUDA only.
_DEVICES: dict[str, list[str]] = {"int8": ["cpu"], "fp16": ["cuda"], "fp32": ["cpu", "cuda"]}
_METHODS: dict[str, Callable[[str], str]] = {
    "int8": int8_method, "fp16": lambda _: FP16_METHOD, "fp32": lambda _: "float32 weights",
}
FUSE_METHOD = "onnxruntime.transformers.optimizer fusions (bart: SkipLayerNormalization, BiasGelu) first"


def next_version_dir(bundle_dir: Path) -> Path:
    """The model's next numeric version directory beside `bundle_dir`."""
    versions = [int(p.name) for p in bundle_dir.parent.iterdir() if p.is_dir() and p.name.isdigit()]
    return bundle_dir.parent / str(max(versions, default=0) + 1)


def _name_and_version(src: Manifest, dst: Path) -> tuple[str, str]:
    """models/<name>/<version>/ names the bundle; any other directory keeps the source's name and version."""
    if dst.name.isdigit():
        return dst.parent.name, dst.name
    return src.name, src.version


def _convert_graphs(
    src: Path, work: Path, manifest: Manifest, precision: Precision, int8_form: str, fuse: bool
) -> dict[str, GraphConversion]:
    graphs = (manifest.encoder.file, manifest.decoder.file)
    for name in manifest.files:
        if name not in graphs:
            shutil.copy(src / name, work / name)
    shape = _attention_shape(src, manifest) if fuse else None
    return {name: convert_graph(src / name, work / name, precision, int8_form, shape) for name in graphs}


def _fusable(src: Path, manifest: Manifest) -> bool:
    """A transformer or Marian bundle whose attention is written out op by op. Graphs with one ONNX
    `Attention` node per block leave the transformer optimizer nothing: its shape inference stops
    at that op, and no fusion then matches."""
    if manifest.architecture not in ("transformer", "marian") or not {"n_heads", "d_model"} <= set(manifest.dims):
        return False
    decoder = onnx.load(str(src / manifest.decoder.file), load_external_data=False)
    return not any(node.op_type == "Attention" for node in decoder.graph.node)


def _attention_shape(src: Path, manifest: Manifest) -> tuple[int, int]:
    if not _fusable(src, manifest):
        raise ValueError(f"fusions need a transformer or marian bundle with n_heads and d_model in its dims and "
                         f"attention written out op by op (not one ONNX Attention node per block), "
                         f"got {manifest.architecture} {manifest.dims}")
    return manifest.dims["n_heads"], manifest.dims["d_model"]


def _loads_here(work: Path, manifest: Manifest, precision: Precision) -> bool:
    """Loads the converted graphs the way the server does (CPU provider) and checks them against
    the manifest. An fp16 graph this ONNX Runtime cannot run on CPU is left to onnx.checker."""
    try:
        loaded(work, manifest, threads=1)
    except BundleMismatch as e:
        raise ValueError(f"the {precision} graphs break the bundle's contract: {e}") from None
    except Exception as e:  # ONNX Runtime's load errors: no CPU kernel for a float16 op
        if precision != "fp16":
            raise
        log.warning("the fp16 graphs do not load on the CPU provider (%s); checked with onnx.checker only, "
                    "quality not measured", e)
        return False
    return True


def quantize_bundle(
    src: Path,
    dst: Path,
    precision: str,
    bar: QualityBar = QualityBar(),
    overwrite: bool = False,
    int8_form: str = DEFAULT_INT8_FORM,
    fuse: bool | None = None,
) -> Manifest:
    """Writes the `precision` variant ("int8" or "fp16") of the float32 bundle `src` to `dst`.

    `int8_form` picks one of `quantize.INT8_FORMS`; `fuse` applies ONNX Runtime's transformer
    fusions first (with precision "fp32", the fusions alone), to our transformers and imported
    Marians. By default (None) int8 transformer bundles are fused: the step-time bench measured
    it 10-20% faster at batch 1 on one thread and no slower elsewhere within the noise. Marian
    graphs get only SkipLayerNormalization from it, measured no faster, so they are not fused by
    default; fp32 and fp16 are not either.

    Raises QualityError (nothing written) when the variant scores past `bar` against `src`,
    ValueError for a bundle that is not float32 or a precision that is not known, and
    FileExistsError when `dst` exists and `overwrite` is false.
    """
    if precision not in PRECISIONS or (precision == "fp32" and not fuse):
        raise ValueError(f"precision must be int8 or fp16 (or fp32 with fuse), got {precision!r}")
    source = verify_bundle(src)
    if fuse is None:  # measured faster for our transformers written op by op; for an imported Marian, no faster
        fuse = precision == "int8" and source.architecture == "transformer" and _fusable(src, source)
    if source.precision.precision != "fp32":
        raise ValueError(f"{src} is already a {source.precision.precision} bundle; convert its float32 source instead")
    name, version = _name_and_version(source, dst)

    def build(work: Path) -> Manifest:
        conversions = _convert_graphs(src, work, source, precision, int8_form, fuse)
        manifest = source.model_copy(update={"name": name, "version": version, "files": checksums(work)})
        runs = _loads_here(work, manifest, precision)
        quality = check_quality(loaded(src, source, bar.threads), loaded(work, manifest, bar.threads), bar) if runs else None
        info = PrecisionInfo(
            precision=precision,
            method="; ".join(m for m in (_METHODS[precision](int8_form), FUSE_METHOD if fuse else "") if m),
            devices=_DEVICES[precision],
            source=f"{source.name} v{source.version}",
            source_decoder_sha256=source.files[source.decoder.file],
            quantized_ops={f: c.quantized_ops for f, c in conversions.items()},
            weight_matmuls={f: c.weight_matmuls for f, c in conversions.items()},
            file_sizes=file_sizes(work),
            quality=quality,
        )
        return manifest.model_copy(update={"export": export_info(_WEIGHTS_DTYPE[precision]), "precision": info})

    write_bundle(dst, overwrite, build)
    return Manifest.read(dst)


def export_at_precision(
    export: Callable[[Path], Path], destination: Path, precision: str, bar: QualityBar, overwrite: bool = False
) -> Path:
    """Runs `export(models_dir)` (which writes models_dir/<name>/<version>) into a scratch
    directory as float32, then writes its `precision` variant to `destination`. The float32
    bundle is the quality guard's reference; it is not kept."""
    if precision == "fp32":
        return export(destination.parent.parent)
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} exists; choose another --version or pass --overwrite")
    with tempfile.TemporaryDirectory(prefix=".fp32-", dir=destination.parent.parent if destination.parent.parent.exists() else None) as tmp:
        fp32 = export(Path(tmp))
        quantize_bundle(fp32, destination, precision, bar, overwrite)
    return destination
