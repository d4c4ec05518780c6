"""Reading a bundle: the manifest, every file against its checksum, the tokenizer or scaler, and
the ONNX Runtime sessions; every read checked.

A bundle passes when its manifest can be read, is UTF-8 JSON, has a `format_version` this
package reads and validates; every file it lists is present, readable and matches its sha256; its
tokenizer parses or its scaling is one `seqcast.bundle.scaling` applies; and its graphs match the
manifest. Anything else raises `BundleRefused` naming the file at fault and the reason. The server
serves what `open_bundle` returns; export checks what it wrote with the same function.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from seqcast.bundle.manifest import FORMAT_VERSION, MANIFEST_FILE, Manifest
from seqcast.bundle.runtime import BundleMismatch, OnnxModel, RuntimeOptions
from seqcast.bundle.scaling import MeanAbsScaler
from seqcast.bundle.text import TextCodec


def reason(error: OSError) -> str:
    """An OS error as a short phrase ("Permission denied"), without the path the caller names."""
    return error.strerror or type(error).__name__


class BundleRefused(Exception):
    """A bundle that must not be served; the message names the file at fault and says why."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file, as recorded in manifests."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle_dir: Path) -> Manifest:
    """The bundle's manifest; raises BundleRefused when it can't be read, isn't UTF-8 JSON, has a
    format_version this server does not read, or isn't a valid manifest."""
    try:
        data = (bundle_dir / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        raise BundleRefused(f"no {MANIFEST_FILE}") from None
    except OSError as e:
        raise BundleRefused(f"cannot read {MANIFEST_FILE}: {reason(e)}") from None
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleRefused(f"{MANIFEST_FILE} is not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BundleRefused(f"{MANIFEST_FILE} is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise BundleRefused(f"{MANIFEST_FILE} nests too deeply to read") from None
    if not isinstance(raw, dict):
        raise BundleRefused(f"{MANIFEST_FILE} is not a JSON object")
    found = raw.get("format_version", FORMAT_VERSION)
    if found != FORMAT_VERSION:
        raise BundleRefused(f"{MANIFEST_FILE} has format_version {json.dumps(found)[:20]}; this server reads {FORMAT_VERSION}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise BundleRefused(f"{MANIFEST_FILE} is not a valid manifest: {e.error_count()} problems, first: {where}: {first['msg']}") from None


def verify_bundle(bundle_dir: Path) -> Manifest:
    """Reads the manifest and checks every file's sha256; raises BundleRefused on any problem."""
    manifest = read_manifest(bundle_dir)
    needed = {manifest.encoder.file, manifest.decoder.file} | {f for f in (manifest.tokenizer, manifest.target_tokenizer) if f}
    if missing := needed - set(manifest.files):
        raise BundleRefused(f"{MANIFEST_FILE} lists no checksum for {sorted(missing)}")
    for name, expected in manifest.files.items():
        if name in ("", ".", "..") or Path(name).name != name:
            raise BundleRefused(f"{MANIFEST_FILE} names {name[:80]!r}: bundle files are plain names inside the bundle")
        path = bundle_dir / name
        try:
            actual = sha256(path)
        except FileNotFoundError:
            raise BundleRefused(f"file {name} is missing") from None
        except OSError as e:
            raise BundleRefused(f"cannot read {name}: {reason(e)}") from None
        if actual != expected:
            raise BundleRefused(f"checksum mismatch for {name}: manifest {expected[:12]}..., file {actual[:12]}...")
    return manifest


@dataclass
class Bundle:
    """A bundle ready to run: its manifest, ONNX Runtime sessions, and tokenizer or scaler."""

    path: Path
    manifest: Manifest
    runtime: OnnxModel
    # Translation models have a tokenizer, forecast models a scaler.
    codec: TextCodec | None
    scaler: MeanAbsScaler | None

    @property
    def name(self) -> str:
        return self.manifest.name


def _codec(bundle_dir: Path, manifest: Manifest) -> TextCodec:
    assert manifest.tokenizer is not None and manifest.special_tokens is not None
    target = bundle_dir / manifest.target_tokenizer if manifest.target_tokenizer else None
    try:
        return TextCodec(bundle_dir / manifest.tokenizer, manifest.special_tokens.eos, target)
    except Exception as e:  # tokenizers raises a bare Exception for a file it can't parse
        names = " or ".join(f for f in (manifest.tokenizer, manifest.target_tokenizer) if f)
        raise BundleRefused(f"{names} does not parse as a tokenizers file: {str(e)[:200]}") from None


def _scaler(manifest: Manifest) -> MeanAbsScaler:
    assert manifest.forecast is not None
    try:
        return MeanAbsScaler.from_manifest(manifest.forecast.scaling)
    except (ValueError, KeyError, TypeError) as e:
        raise BundleRefused(f"{MANIFEST_FILE} forecast.scaling is not one this server applies: {str(e)[:200]}") from None


def open_bundle(bundle_dir: Path, options: RuntimeOptions, *, name: str | None = None, version: str | None = None) -> Bundle:
    """Verifies and loads one bundle; raises BundleRefused naming the file at fault. `name` and
    `version`, when given (the repository's folder names), must be the manifest's."""
    manifest = verify_bundle(bundle_dir)
    if name is not None and manifest.name != name:
        raise BundleRefused(f"{MANIFEST_FILE} names model {manifest.name[:80]!r} but its folder is {name!r}")
    if version is not None and manifest.version != version:
        raise BundleRefused(f"{MANIFEST_FILE} says version {manifest.version[:20]!r} but its folder is {version!r}")
    # The cheap checks first: the tokenizer or scaler before the ONNX Runtime sessions.
    codec = _codec(bundle_dir, manifest) if manifest.forecast is None else None
    scaler = _scaler(manifest) if manifest.forecast is not None else None
    try:
        runtime = OnnxModel.from_manifest(bundle_dir, manifest, options)
    except BundleMismatch as e:
        raise BundleRefused(str(e)) from None
    except Exception as e:  # ONNX Runtime's own load errors (corrupt graph, unsupported op)
        raise BundleRefused(f"ONNX Runtime could not load it: {e}") from None
    return Bundle(bundle_dir, manifest, runtime, codec, scaler)
