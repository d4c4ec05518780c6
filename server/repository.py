"""The model repository: which folders under `model_dir` are bundles, in the order they are tried.

Layout (README, "Model repository"): every folder `<model_dir>/<name>/` is a model, and every
folder `<name>/<version>/` whose name is a number is one of its versions, tried highest first
(`seqcast.server.models` serves the first that loads). Version folders with other names are
ignored with one warning each; names starting with a dot are skipped silently, so a bundle can be
written under `.tmp` and renamed into place. Reads here are listings and `stat`s only: a folder
that cannot be listed is reported with the reason, never raised.

A version's `Fingerprint` (name, size and modification time of each file) tells the live reload
whether a folder changed since it was last loaded or refused.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from seqcast.bundle.loading import reason

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class ModelFolder:
    """One `<model_dir>/<name>/` folder: its numeric versions, highest first, or why it can't be read."""

    name: str
    path: Path
    versions: tuple[Path, ...] = ()
    error: str | None = None


def fingerprint(version_dir: Path) -> Fingerprint | None:
    """(file, size, mtime) of every entry of a version folder, sorted; None if it can't be listed."""
    try:
        with os.scandir(version_dir) as entries:
            stats = [(e.name, e.stat()) for e in entries]
    except OSError:
        return None
    return tuple(sorted((name, s.st_size, s.st_mtime_ns) for name, s in stats))


class Repository:
    """Scans `model_dir`; warns once per ignored folder, however often it scans."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._warned: set[Path] = set()

    def scan(self) -> list[ModelFolder]:
        """Every model folder by name, with its numeric versions highest first."""
        try:
            names = sorted(p for p in self.model_dir.iterdir() if not p.name.startswith(".") and p.is_dir())
        except OSError as e:
            log.error("cannot list model_dir %s: %s; no model is served from it", self.model_dir, reason(e))
            return []
        return [self._model(path) for path in names]

    def _model(self, path: Path) -> ModelFolder:
        try:
            entries = [p for p in path.iterdir() if not p.name.startswith(".") and p.is_dir()]
        except OSError as e:
            return ModelFolder(path.name, path, error=f"cannot list the model folder: {reason(e)}")
        versions = []
        for entry in entries:
            if entry.name.isascii() and entry.name.isdigit():
                versions.append(entry)
            elif entry not in self._warned:
                self._warned.add(entry)
                log.warning("ignoring %s: version folders are numbers (1, 2, ...)", entry)
        return ModelFolder(path.name, path, tuple(sorted(versions, key=lambda v: int(v.name), reverse=True)))
