"""Loading bundles: discovery, checksum and graph checks, one scheduler per model.

Every `models/<name>/<version>/` under the model directory is a candidate; the highest version
of each name is loaded. A bundle that fails any check (unreadable manifest, missing file,
checksum mismatch, graphs that differ from the manifest) is refused with one log line naming
the reason, and the others keep loading and serving.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from seqcast.server.errors import InvalidArgument, ModelNotFound, shown
from seqcast.server.manifest import MANIFEST_FILE, Manifest
from seqcast.server.runtime import BundleMismatch, OnnxModel, RuntimeOptions
from seqcast.server.scaling import MeanAbsScaler
from seqcast.server.scheduler import Scheduler, SchedulerLimits
from seqcast.server.text import TextCodec

Task = Literal["translation", "forecast"]

log = logging.getLogger(__name__)


class BundleRefused(Exception):
    """A bundle that must not be served; the message says why."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file, as recorded in manifests."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version_key(path: Path) -> tuple[int, int | str]:
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def discover(model_dir: Path) -> list[Path]:
    """The newest version directory of every model name under model_dir."""
    found = []
    for name_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [v for v in name_dir.iterdir() if v.is_dir() and not v.name.startswith(".")]
        if versions:
            found.append(max(versions, key=_version_key))
    return found


def verify_bundle(bundle_dir: Path) -> Manifest:
    """Reads the manifest and checks every file's sha256; raises BundleRefused on any problem."""
    try:
        manifest = Manifest.read(bundle_dir)
    except FileNotFoundError:
        raise BundleRefused(f"no {MANIFEST_FILE}") from None
    except ValidationError as e:
        raise BundleRefused(f"{MANIFEST_FILE} is not a valid manifest: {e.error_count()} problems, first: {e.errors()[0]['msg']}") from None
    needed = {manifest.encoder.file, manifest.decoder.file} | {f for f in (manifest.tokenizer, manifest.target_tokenizer) if f}
    if missing := needed - set(manifest.files):
        raise BundleRefused(f"manifest lists no checksum for {sorted(missing)}")
    for name, expected in manifest.files.items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleRefused(f"file {name} is missing")
        actual = sha256(path)
        if actual != expected:
            raise BundleRefused(f"checksum mismatch for {name}: manifest {expected[:12]}..., file {actual[:12]}...")
    return manifest


@dataclass
class LoadedModel:
    """A servable model: its manifest, sessions, tokenizer or scaler, and (when served) its scheduler."""

    path: Path
    manifest: Manifest
    runtime: OnnxModel
    # Translation models have a tokenizer, forecast models a scaler.
    codec: TextCodec | None
    scaler: MeanAbsScaler | None
    # Admission and in-flight batching on the model's decoding thread (ONNX Runtime releases the
    # GIL, so the event loop stays free); set by the registry.
    scheduler: Scheduler | None = None

    @property
    def name(self) -> str:
        return self.manifest.name


def load_model(bundle_dir: Path, options: RuntimeOptions) -> LoadedModel:
    manifest = verify_bundle(bundle_dir)
    try:
        runtime = OnnxModel.from_manifest(bundle_dir, manifest, options)
    except BundleMismatch as e:
        raise BundleRefused(str(e)) from None
    except Exception as e:  # ONNX Runtime's own load errors (corrupt graph, unsupported op)
        raise BundleRefused(f"ONNX Runtime could not load it: {e}") from None
    if manifest.forecast is not None:
        return LoadedModel(bundle_dir, manifest, runtime, None, MeanAbsScaler.from_manifest(manifest.forecast.scaling))
    target = bundle_dir / manifest.target_tokenizer if manifest.target_tokenizer else None
    codec = TextCodec(bundle_dir / manifest.tokenizer, manifest.special_tokens.eos, target)
    return LoadedModel(bundle_dir, manifest, runtime, codec, None)


class ModelRegistry:
    def __init__(
        self,
        models: list[LoadedModel],
        default_model: str = "",
        default_forecast_model: str = "",
        limits: SchedulerLimits | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        for model in models:
            model.scheduler = Scheduler(model.name, model.runtime, limits or SchedulerLimits.defaults())
        self.defaults = {
            "translation": self._default("translation", default_model, "en-de"),
            "forecast": self._default("forecast", default_forecast_model, "tourism"),
        }

    def _default(self, task: Task, chosen: str, preferred: str) -> str:
        names = sorted(n for n, m in self.models.items() if m.manifest.task == task)
        if chosen and chosen not in names:
            raise ValueError(f"default {task} model {chosen!r} is not loaded (loaded {task} models: {names})")
        return chosen or (preferred if preferred in names else (names or [""])[0])

    @classmethod
    def load(
        cls,
        model_dir: Path,
        options: RuntimeOptions,
        default_model: str = "",
        default_forecast_model: str = "",
        limits: SchedulerLimits | None = None,
    ) -> "ModelRegistry":
        loaded = []
        for bundle_dir in discover(model_dir):
            try:
                model = load_model(bundle_dir, options)
            except BundleRefused as e:
                log.error("refusing bundle %s: %s", bundle_dir, e)
                continue
            log.info(
                "loaded %s version %s (%s, %s) on %s",
                model.name, model.manifest.version, model.manifest.task, model.manifest.architecture, model.runtime.provider,
            )
            loaded.append(model)
        if not loaded:
            log.warning("no servable bundle under %s", model_dir)
        return cls(loaded, default_model, default_forecast_model, limits)

    def get(self, name: str, task: Task) -> LoadedModel:
        """The model called `name` (empty: the default model of `task`), which must serve `task`."""
        name = name or self.defaults[task]
        try:
            model = self.models[name]
        except KeyError:
            loaded = sorted(n for n, m in self.models.items() if m.manifest.task == task)
            raise ModelNotFound(f"{task} model {shown(name)} is not loaded; loaded {task} models: {loaded or 'none'}") from None
        if model.manifest.task != task:
            other = "Forecasting.Forecast" if model.manifest.task == "forecast" else "Translation.Translate"
            raise InvalidArgument(f"model {name!r} is a {model.manifest.task} model: call {other} with it, or name a {task} model", "model")
        return model

    def close(self) -> None:
        """Stops every model's scheduler once its running and queued requests are done."""
        for model in self.models.values():
            if model.scheduler is not None:
                model.scheduler.close()
