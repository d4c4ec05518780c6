"""Streaming detokenization: pieces join to the full text, also across split characters."""

from __future__ import annotations

from pathlib import Path

from seqcast.export.tokenizer import EOS_ID, train_tokenizer
from seqcast.server.text import StreamDetokenizer, TextCodec


def test_stream_pieces_join_to_the_decoded_text_even_for_multibyte_characters(tmp_path: Path) -> None:
    corpus = ["Größe ändern", "Übersetzung läuft", "Datei öffnen", "Änderungen speichern"] * 20
    path = tmp_path / "tokenizer.json"
    train_tokenizer(corpus, vocab_size=300, out_file=path)
    codec = TextCodec(path, EOS_ID)
    for text in ["Größe ändern ✓ 日本", "%(name)s öffnen {0} <b>fett</b>"]:
        ids = codec.encode([text])[0][:-1]
        assert codec.decode(ids) == text  # byte-level BPE round-trips, placeholders included
        stream = StreamDetokenizer(codec)
        pieces = [stream.push(t) for t in ids] + [stream.finish()]
        assert "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces)
