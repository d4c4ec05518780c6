"""seqcast's Python client: `SeqcastClient` and the records it returns. `seqcast-client` is `cli`."""

from seqcast.client.client import (
    ForecastInfo,
    ForecastResult,
    ModelInfo,
    SeqcastClient,
    SeqcastError,
    SeriesForecast,
    Translation,
    TranslationChunk,
)

__all__ = [
    "ForecastInfo", "ForecastResult", "ModelInfo", "SeqcastClient", "SeqcastError", "SeriesForecast", "Translation",
    "TranslationChunk",
]
