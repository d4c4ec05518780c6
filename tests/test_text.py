"""Streaming detokenization: pieces join to the full text, also across split characters."""

from __future__ import annotations

import random
from pathlib import Path

from seqcast.bundle.text import StreamDetokenizer, TextCodec
from seqcast.export.translation.tokenizer import EOS_ID, train_tokenizer


def test_stream_pieces_join_to_the_decoded_text_even_for_multibyte_characters(tmp_path: Path) -> None:
    corpus = ["Größe ändern", "Übersetzung läuft", "Datei öffnen", "Änderungen speichern"] * 20
    path = tmp_path / "tokenizer.json"
    train_tokenizer(corpus, vocab_size=300, out_file=path)
    codec = TextCodec(path, EOS_ID)
    for text in ["Größe ändern ✓ 日本", "%(name)s öffnen {0} <b>fett</b>"]:
        ids = codec.encode([text])[0][:-1]
        assert codec.decode(ids) == text  # byte-level BPE round-trips, placeholders included
        stream = StreamDetokenizer(codec)
        pieces = [stream.push([t]) for t in ids] + [stream.finish()]
        assert "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces)


def test_stream_pieces_join_for_random_tokens_in_random_groups_and_decode_only_short_windows(tmp_path: Path) -> None:
    corpus = ["Größe ändern", "Übersetzung läuft", "Datei öffnen ✓", "日本語のテキスト", "%(name)s <b>fett</b>"] * 20
    path = tmp_path / "tokenizer.json"
    train_tokenizer(corpus, vocab_size=300, out_file=path)
    codec = TextCodec(path, EOS_ID)
    vocab = codec.tokenizer.get_vocab_size()
    rng = random.Random(0)
    windows: list[int] = []
    decode = codec.decode

    def counting(ids):
        windows.append(len(ids))
        return decode(ids)

    for _ in range(50):
        ids = [rng.randrange(3, vocab) for _ in range(rng.randrange(1, 200))]
        codec.decode = counting
        stream = StreamDetokenizer(codec)
        pieces, i = [], 0
        windows.clear()
        while i < len(ids):
            group = rng.randrange(1, 4)
            pieces.append(stream.push(ids[i : i + group]))
            i += group
        streamed = windows[:]
        pieces.append(stream.finish())
        codec.decode = decode
        assert "".join(pieces) == codec.decode(ids)
        # Only the final decode reads the whole sequence; pushes read a window of recent tokens.
        assert max(streamed, default=0) <= 32 or len(ids) <= 32
