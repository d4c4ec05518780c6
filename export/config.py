"""Training configuration: one frozen record per run, saved as the run's config.json.

Free of torch imports so that the command line (and the torch-free server image) can read it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    import torch

Architecture = Literal["transformer", "gru-attention"]
ForecastArchitecture = Literal["transformer", "lstm-additive", "lstm-dot", "ar", "mlp"]
# "csv": the series of a user's CSV file (ForecastConfig.csv).
ForecastData = Literal["tourism", "vic_elec", "csv"]
# Quantile levels of every neural forecaster; 0.5 (the median) is the point forecast.
QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class TrainConfig:
    architecture: Architecture = "transformer"
    # A built corpus directory (train/dev/test.jsonl.gz), a TSV file of source<TAB>target lines,
    # or two aligned plain-text files (source, then target); see `seqcast.export.translation.corpus`.
    corpus: tuple[str, ...] = ("data/en-de",)
    # Language codes recorded in the bundle's manifest.
    source_language: str = "en"
    target_language: str = "de"
    # Model size (transformer: d_model/heads/layers/d_ff; GRU: embed/hidden from d_model).
    vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    # Sentences longer than this many tokens are left out of training; the bundle's input limit.
    max_tokens: int = 128
    # Optimisation.
    steps: int = 20000
    batch_tokens: int = 6000
    lr: float = 1e-3
    warmup_steps: int = 1000
    label_smoothing: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    # bf16 autocast for the forward pass (float32 master weights): about 2x faster on CPUs with
    # AVX-512 BF16 or AMX, about 2x slower on CPUs without. None: on where the CPU has them.
    bf16: bool | None = None
    seed: int = 0
    # Book-keeping.
    eval_every: int = 1000
    checkpoint_every: int = 500
    # Use only the first N training pairs (quick runs and tests); None = all.
    train_limit: int | None = None
    # Test sentences scored at the end (None = the whole test split).
    test_limit: int | None = None
    threads: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "corpus", tuple(str(p) for p in self.corpus))
        if len(self.corpus) not in (1, 2):
            raise ValueError(f"--corpus takes one path (a corpus directory or a TSV file) or two aligned "
                             f"text files (source, target), not {len(self.corpus)}")

    def corpus_paths(self) -> list[Path]:
        return [Path(p) for p in self.corpus]

    def uses_bf16(self) -> bool:
        """Whether training autocasts to bf16: as set, or where the CPU computes bf16 natively."""
        if self.bf16 is not None:
            return self.bf16
        import torch

        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())

    def build_model(self) -> "torch.nn.Module":
        # Imported here: the configuration (and `seqcast --help`) must not need torch.
        from seqcast.export.transformer import Transformer, TransformerConfig
        from seqcast.export.translation.gru import GruAttention, GruConfig

        if self.architecture == "transformer":
            return Transformer(
                TransformerConfig(
                    vocab_size=self.vocab_size,
                    d_model=self.d_model,
                    n_heads=self.n_heads,
                    encoder_layers=self.layers,
                    decoder_layers=self.layers,
                    d_ff=self.d_ff,
                    dropout=self.dropout,
                )
            )
        return GruAttention(
            GruConfig(
                vocab_size=self.vocab_size,
                embed_dim=self.d_model,
                hidden=self.d_model,
                attention_dim=self.d_model,
                dropout=self.dropout,
            )
        )


@dataclass(frozen=True)
class CsvSource:
    """A user's CSV file as forecasting data (`seqcast train-forecast --csv`), with everything
    needed to read it again the same way: a run's config.json holds it, so that export and
    evaluation rebuild the same task. Training records the inferred settings, never None."""

    path: str
    # Layout, as `seqcast-client forecast` reads it: wide (one numeric column per series;
    # `columns` picks some) or long (one row per series and time step: id and value columns).
    columns: tuple[str, ...] = ()
    id_column: str | None = None
    value_column: str | None = None
    # The ISO 8601 time stamps (wide: found when None; long: required for training).
    time_column: str | None = None
    # None: inferred (frequency from the time stamps, season and horizon from the frequency;
    # see `seqcast.export.forecast.csv_source`).
    frequency: str | None = None
    season_length: int | None = None
    horizon: int | None = None

    def __post_init__(self) -> None:
        if (self.id_column is None) != (self.value_column is None):
            raise ValueError("the long layout needs both an id column and a value column")
        if self.id_column is not None and self.columns:
            raise ValueError("selecting columns applies to the wide layout; the long layout has an id column")
        for name in ("season_length", "horizon"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {value}")


@dataclass(frozen=True)
class ForecastConfig:
    """One forecasting run. Horizon, context length and split come from the data set's task
    (`seqcast.export.forecast.data.forecast_task`); the model only sees scaled values."""

    data: ForecastData = "tourism"
    # The CSV file read when data is "csv", and only then.
    csv: CsvSource | None = None
    architecture: ForecastArchitecture = "transformer"
    # Model size: transformer width/heads/layers/feed-forward; LSTM units = d_model; MLP hidden
    # width = d_model and hidden layers = layers (0: linear).
    d_model: int = 64
    n_heads: int = 4
    layers: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    # AR(p) order; 0 = the data set's default.
    ar_order: int = 0
    quantile_levels: tuple[float, ...] = QUANTILE_LEVELS
    # MLP ensemble: members (trained each on its own loss, quantiles averaged) and the values of
    # history each reads, cycled over the members; () = the data set's context length.
    members: int = 1
    lookbacks: tuple[int, ...] = ()
    # LSTMs only: share of the point forecast taken from the Theta method (the mean of its
    # forecasts from each of the last `theta_lookbacks` values; multiplicative seasonality, so
    # for data scaled without centring); the LSTM's quantiles move with the point. 0 = none.
    theta_weight: float = 0.0
    theta_lookbacks: tuple[int, ...] = (40, 48, 64)
    # Share of training batches decoded free-running (fed the model's own median) instead of
    # teacher-forced; the rest see the true previous values. None: the data set's default.
    free_running: float | None = None
    # Optimisation: windows per batch, steps, AdamW with linear warm-up then cosine decay.
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    seed: int = 0
    eval_every: int = 250
    checkpoint_every: int = 250
    threads: int = 2

    def __post_init__(self) -> None:
        if (self.data == "csv") != (self.csv is not None):
            raise ValueError("a CSV source goes with data 'csv' and data 'csv' needs one (--csv FILE)")


Config = TypeVar("Config", TrainConfig, ForecastConfig, CsvSource)


def from_json(config: type[Config], raw: dict[str, Any]) -> Config:
    """A config as saved in a run's config.json: lists back to tuples, unknown keys ignored, a
    forecast run's CSV source back to a `CsvSource`."""
    known = {f.name for f in fields(config)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
    if isinstance(values.get("csv"), dict):
        values["csv"] = from_json(CsvSource, values["csv"])
    return config(**values)
