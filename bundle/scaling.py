"""Per-series scaling of forecast values, shared by training (export) and serving.

The bundle manifest records the scaler's settings (`to_manifest`); the server rebuilds it
(`from_manifest`) and applies exactly the transform the model was trained with, and its inverse
to the model's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqcast.bundle.manifest import ForecastSpec


@dataclass(frozen=True)
class Scale:
    """The transform for one series: scaled = (x - loc) / scale."""

    loc: float
    scale: float


@dataclass(frozen=True)
class MeanAbsScaler:
    """Per-series mean-absolute scaling, fitted on the context window a model sees.

    scale = max(mean(|context - loc|), min_scale), with loc = mean(context) when `center` is
    true and 0 otherwise (the DeepAR / Chronos "mean scaling", which keeps zero at zero and the
    sign of every value). The floor keeps constant or all-zero contexts from dividing by zero:
    they pass through unscaled up to the tiny factor `min_scale`. Arithmetic is float64 so
    trainer and server agree to the last bit; outputs keep the input's floating dtype.
    """

    center: bool = False
    min_scale: float = 1e-6

    def __post_init__(self) -> None:
        if not self.min_scale > 0:
            raise ValueError(f"min_scale must be > 0, got {self.min_scale}")

    def fit(self, context: np.ndarray) -> Scale:
        """Fit on one series' context, shape (T,), all values finite."""
        x = np.asarray(context, dtype=np.float64)
        if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
            raise ValueError("context must be a non-empty 1-D array of finite values")
        loc = float(x.mean()) if self.center else 0.0
        return Scale(loc, max(float(np.abs(x - loc).mean()), self.min_scale))

    def transform(self, values: np.ndarray, scale: Scale) -> np.ndarray:
        """(values - loc) / scale; any shape, e.g. (T,) or quantiles (Q, H)."""
        return _as_float(values, (np.asarray(values, np.float64) - scale.loc) / scale.scale)

    def inverse(self, values: np.ndarray, scale: Scale) -> np.ndarray:
        """values * scale + loc: undoes `transform` (model outputs back to data units)."""
        return _as_float(values, np.asarray(values, np.float64) * scale.scale + scale.loc)

    def to_manifest(self) -> dict[str, object]:
        """JSON-ready settings for a bundle manifest's "scaling" entry."""
        return {"type": "mean_abs", "center": self.center, "min_scale": self.min_scale}

    @classmethod
    def from_manifest(cls, entry: dict[str, object]) -> MeanAbsScaler:
        """The scaler described by `to_manifest`'s output; refuses other scaling types."""
        if entry.get("type") != "mean_abs":
            raise ValueError(f"not a mean_abs scaling entry: {entry!r}")
        return cls(center=bool(entry["center"]), min_scale=float(entry["min_scale"]))  # type: ignore[arg-type]


def _as_float(like: np.ndarray, result: np.ndarray) -> np.ndarray:
    # Keep float32 inputs float32 (what the ONNX graphs take); integers become float64.
    dtype = np.asarray(like).dtype
    return result.astype(dtype if np.issubdtype(dtype, np.floating) else np.float64)


def scaled_context(values: np.ndarray, spec: ForecastSpec, scaler: MeanAbsScaler) -> tuple[np.ndarray, Scale]:
    """The last `context_length` values of a series, scaled by a fit on them (float32), and the fit."""
    context = np.asarray(values, dtype=np.float64)[-spec.context_length :]
    scale = scaler.fit(context)
    return scaler.transform(context, scale).astype(np.float32), scale
