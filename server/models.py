"""The registry of served models: one scheduler per model, versions loaded and drained live.

Builds on `seqcast.server.repository` (which folders are versions, highest first) and
`seqcast.bundle.loading` (every check a bundle must pass). Per model name the highest version
that passes every check, and names the model and version of its folders, serves. A bundle that
fails a check is refused with one log line naming the file and the reason, the next version down
is tried, and the other models load and serve. Nothing a bundle holds stops the server from
starting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from seqcast.bundle.loading import Bundle, BundleRefused, open_bundle
from seqcast.bundle.runtime import RuntimeOptions
from seqcast.server import metrics
from seqcast.server.errors import InvalidArgument, ModelNotFound, shown
from seqcast.server.repository import Fingerprint, ModelFolder, Repository, fingerprint
from seqcast.server.scheduler import Scheduler, SchedulerLimits

Task = Literal["translation", "forecast"]

log = logging.getLogger(__name__)


class StartupRefused(Exception):
    """A setting only the model repository can check is wrong (a default model with no folder):
    `seqcast serve` stops before it binds a port, with one line saying which."""


@dataclass
class LoadedModel(Bundle):
    """A served bundle and its scheduler: admission and in-flight batching on the model's decoding
    thread (ONNX Runtime releases the GIL, so the event loop stays free); set by the registry."""

    scheduler: Scheduler | None = None


def load_model(bundle_dir: Path, options: RuntimeOptions, *, name: str | None = None, version: str | None = None) -> LoadedModel:
    """`open_bundle`, as a model the registry can serve."""
    bundle = open_bundle(bundle_dir, options, name=name, version=version)
    return LoadedModel(bundle.path, bundle.manifest, bundle.runtime, bundle.codec, bundle.scaler)


@dataclass(frozen=True)
class Change:
    """What a scan decided for one model name: serve `model` (None: stop serving the name)."""

    name: str
    model: LoadedModel | None
    fingerprint: Fingerprint | None = None


_UNSEEN = object()


class ModelRegistry:
    """The models being served, by name, and how they change.

    `refresh` rescans the repository: per name, the highest version that loads serves; a version
    that was refused is tried again only once its files change. Loading happens off the event loop
    (`plan`); publishing (`apply`) swaps the dict entry on the event loop, so new requests go to the
    new version at once. The replaced (or removed) version keeps accepting for `retire_grace_s`, for
    handlers that looked it up just before the swap, then its scheduler finishes every request it
    accepted, running and queued, and stops, on a thread of its own.
    """

    # How long a replaced or removed version still accepts requests before it drains: longer than
    # any handler takes between looking a model up and submitting to it (well under a second,
    # even for a 64 MiB request), short enough to free the old version's memory soon.
    retire_grace_s = 2.0

    def __init__(
        self,
        model_dir: Path,
        options: RuntimeOptions,
        default_model: str = "",
        default_forecast_model: str = "",
        limits: SchedulerLimits | None = None,
    ) -> None:
        self.repository = Repository(model_dir)
        self.options = options
        self.limits = limits or SchedulerLimits.defaults()
        self.models: dict[str, LoadedModel] = {}
        # Every model folder name seen by the last scan, serving or not (health reports each).
        self.known: set[str] = set()
        self._chosen: dict[Task, str] = {"translation": default_model, "forecast": default_forecast_model}
        # Version folders refused, by the fingerprint they had then; serving ones by theirs.
        self._refused: dict[Path, object] = {}
        self._fingerprints: dict[str, Fingerprint | None] = {}
        self._retiring: list[threading.Thread] = []
        self._stopping = threading.Event()

    @classmethod
    def load(
        cls,
        model_dir: Path,
        options: RuntimeOptions,
        default_model: str = "",
        default_forecast_model: str = "",
        limits: SchedulerLimits | None = None,
    ) -> "ModelRegistry":
        """The registry of every servable bundle under model_dir, loaded now (at start-up)."""
        registry = cls(model_dir, options, default_model, default_forecast_model, limits)
        registry.apply(registry.plan())
        if not registry.models:
            log.warning("no servable bundle under %s", model_dir)
        for task, chosen in registry._chosen.items():
            if chosen and chosen not in registry.models:
                if chosen not in registry.known:
                    raise StartupRefused(f"default {task} model {chosen!r} has no folder under {model_dir} "
                                         f"(models: {', '.join(sorted(registry.known)) or 'none'})")
                log.error("default %s model %s is not served (see above); requests that name no model get NOT_FOUND", task, chosen)
        return registry

    @property
    def defaults(self) -> dict[Task, str]:
        """The model of each task that requests naming none get (possibly one not served now)."""
        return {"translation": self._default("translation", "en-de"), "forecast": self._default("forecast", "tourism")}

    def _default(self, task: Task, preferred: str) -> str:
        if chosen := self._chosen[task]:
            return chosen
        names = sorted(n for n, m in self.models.items() if m.manifest.task == task)
        return preferred if preferred in names else (names or [""])[0]

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

    # --- scanning and loading (off the event loop) ---------------------------------------------

    def plan(self) -> list[Change]:
        """Scans the repository and loads what changed; publishes nothing (see `apply`)."""
        folders = self.repository.scan()
        self.known = {f.name for f in folders} | set(self.models)
        changes = [c for folder in folders if (c := self._plan_model(folder)) is not None]
        present = {f.name for f in folders}
        changes += [Change(name, None) for name in self.models if name not in present]
        paths = {v for f in folders for v in f.versions} | {f.path for f in folders}
        self._refused = {path: state for path, state in self._refused.items() if path in paths}
        return changes

    def _plan_model(self, folder: ModelFolder) -> Change | None:
        current = self.models.get(folder.name)
        if folder.error is not None:
            self._refuse(folder.path, folder.error, folder.error)
        for version in folder.versions:
            fp = fingerprint(version)
            if current is not None and version == current.path and fp == self._fingerprints.get(folder.name):
                return None  # the serving version is still the best one
            if self._refused.get(version, _UNSEEN) == fp:
                continue  # refused before and unchanged since
            try:
                model = load_model(version, self.options, name=folder.name, version=version.name)
            except BundleRefused as e:
                self._refuse(version, str(e), fp)
                continue
            except Exception as e:  # a bug, or an error this loader does not know yet: refuse, go on
                self._refuse(version, f"unexpected {type(e).__name__}: {str(e)[:200]}", fp)
                continue
            self._refused.pop(version, None)
            return Change(folder.name, model, fp)
        if current is not None:
            return Change(folder.name, None)
        if not folder.versions and folder.error is None:
            self._refuse(folder.path, "no version folder (1, 2, ...) in it", ())
        return None

    def _refuse(self, path: Path, why: str, state: object) -> None:
        """Logs one line per refusal, once while the folder stays as it was."""
        if self._refused.get(path, _UNSEEN) != state:
            log.error("refusing bundle %s: %s", path, why)
            self._refused[path] = state

    # --- publishing (on the event loop) --------------------------------------------------------

    def apply(self, changes: list[Change]) -> None:
        """Publishes the planned changes; a replaced or removed model drains, then stops."""
        for change in changes:
            old = self.models.get(change.name)
            if change.model is not None:
                model, m = change.model, change.model.manifest
                model.scheduler = Scheduler(model.name, model.runtime, self.limits)
                self.models[change.name] = model  # a replaced model keeps its place in listings
                self._fingerprints[change.name] = change.fingerprint
                replacing = "" if old is None else f", replacing version {old.manifest.version}"
                log.info("serving %s version %s (%s, %s) on %s%s", model.name, m.version, m.task, m.architecture,
                         model.runtime.provider, replacing)
                metrics.set_model_info(model.name, m.version, m.task, m.architecture, model.runtime.provider)
            else:
                self.models.pop(change.name, None)
                self._fingerprints.pop(change.name, None)
                if old is not None:
                    log.warning("%s no longer serves: no loadable version is left under %s", change.name, old.path.parent)
                    metrics.forget_model(change.name)
            if old is not None:
                self._retire(old)

    def _retire(self, model: LoadedModel) -> None:
        def drain() -> None:
            # A handler that looked the model up just before the swap may still be preparing its
            # work off the event loop: the old version keeps accepting for a moment (cut short
            # when the server stops), then finishes what it accepted and stops.
            self._stopping.wait(self.retire_grace_s)
            if model.scheduler is not None:
                model.scheduler.close()
            log.info("unloaded %s version %s: its requests finished", model.name, model.manifest.version)

        thread = threading.Thread(target=drain, name=f"retire-{model.name}", daemon=True)
        thread.start()
        self._retiring = [t for t in self._retiring if t.is_alive()] + [thread]

    async def refresh(self) -> None:
        """Rescans, loading on a worker thread; publishes on the caller's event loop."""
        self.apply(await asyncio.to_thread(self.plan))

    def close(self) -> None:
        """Stops every model's scheduler once its running and queued requests are done."""
        self._stopping.set()
        for model in self.models.values():
            if model.scheduler is not None:
                model.scheduler.close()
        for thread in self._retiring:
            thread.join()
