"""seqcast's Python client: `SeqcastClient` and the records it returns. `seqcast-client` is `cli`."""

from seqcast.client.client import (
    Alignments,
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
    "Alignments", "BeamSearch", "ForecastInfo", "ForecastResult", "ModelInfo", "Sampling", "SeqcastClient", "SeqcastError", "SeriesForecast", "Tls",
    "Translation", "TranslationChunk",
]
