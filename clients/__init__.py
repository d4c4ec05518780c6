"""seqcast's Python client: `SeqcastClient` and the records it returns. `seqcast-client` is `cli`."""

from seqcast.client.client import ModelInfo, SeqcastClient, SeqcastError, Translation, TranslationChunk

__all__ = ["ModelInfo", "SeqcastClient", "SeqcastError", "Translation", "TranslationChunk"]
