"""seqcast's Python client: `SeqcastClient` and the records it returns. `seqcast-client` is `cli`."""

from seqcast.client.client import (
    BeamSearch,
    ForecastInfo,
    ForecastResult,
    ModelInfo,
    Sampling,
    SeqcastClient,
    SeqcastError,
    SeriesForecast,
    Tls,
    Translation,
    TranslationChunk,
)

__all__ = [
    "BeamSearch", "ForecastInfo", "ForecastResult", "ModelInfo", "Sampling", "SeqcastClient", "SeqcastError", "SeriesForecast", "Tls",
    "Translation", "TranslationChunk",
]
