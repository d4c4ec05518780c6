"""Text to token ids and back, with the bundle's own `tokenizer.json`.

A bundle with separate source and target vocabularies (imported Marian models) also has a
`target_tokenizer`: `tokenizer.json` then only encodes the source and the target one decodes.
Both are plain `tokenizers` files, so serving needs neither sentencepiece nor torch.

`source_pieces` and `target_pieces` spell tokens out readably, one string per token, for the
labels of word alignments.

`StreamDetokenizer` turns tokens into text pieces as they arrive, incrementally: each call
decodes only a short window of recent tokens (the tokens of the last piece it emitted, which
give the window its context, plus the new ones), never the whole text again. Byte-level BPE can
split one character over two tokens, so a piece is held back while the window ends in an
incomplete character. When the sequence ends, `finish` decodes the whole text once and emits
what is still missing, so the pieces of a stream always join to the full decoded text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders

_INCOMPLETE = "\ufffd"


class TextCodec:
    def __init__(self, tokenizer_file: Path, eos_id: int, target_tokenizer_file: Path | None = None) -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.target_tokenizer = Tokenizer.from_file(str(target_tokenizer_file)) if target_tokenizer_file else self.tokenizer
        self.eos_id = eos_id
        self._eos_piece = _piece(self.target_tokenizer, eos_id)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Source token ids of each text, end-of-sequence appended."""
        return [e.ids + [self.eos_id] for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of target token ids, special tokens left out."""
        return self.target_tokenizer.decode(list(ids), skip_special_tokens=True)

    def source_pieces(self, ids: Sequence[int]) -> list[str]:
        """Source token ids as readable pieces (e.g. "▁Save", "</s>"); see `_piece`. The
        end-of-sequence the server appends is named as the target vocabulary names it: an
        imported source vocabulary may leave unnamed what its tokenizer never produces."""
        return [self._eos_piece if i == self.eos_id else _piece(self.tokenizer, i) for i in ids]

    def target_pieces(self, ids: Sequence[int]) -> list[str]:
        """Target token ids as readable pieces; see `_piece`."""
        return [_piece(self.target_tokenizer, i) for i in ids]


def _piece(tokenizer: Tokenizer, id_: int) -> str:
    """A token as its vocabulary spells it, with "▁" marking a word start (SentencePiece's way).

    Byte-level BPE spells bytes as stand-in characters ("ĠgeÃ¶ffnet"); its decoder turns one
    piece back into text (" geöffnet"), whose leading space becomes "▁" ("▁geöffnet"). A piece
    holding part of a character shows it as U+FFFD.
    """
    piece = tokenizer.id_to_token(id_)
    if piece is None:
        return f"<id {id_}>"
    if isinstance(tokenizer.decoder, decoders.ByteLevel):
        text = tokenizer.decoder.decode([piece])
        return "▁" + text[1:] if text.startswith(" ") else text
    return piece


class StreamDetokenizer:
    """Text pieces of one sequence as its tokens arrive."""

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self.ids: list[int] = []
        # ids[prefix:read] were decoded and emitted last time; they are decoded again as the
        # left context of the next window (a word-initial space depends on what precedes it).
        self._prefix = 0
        self._read = 0
        self._emitted: list[str] = []

    def push(self, tokens: Sequence[int]) -> str:
        """Adds tokens; returns the text that became complete (possibly empty)."""
        self.ids.extend(tokens)
        window = self.codec.decode(self.ids[self._prefix :])
        if window.endswith(_INCOMPLETE):
            return ""
        context = self.codec.decode(self.ids[self._prefix : self._read])
        if not window.startswith(context) or len(window) <= len(context):
            return ""
        piece = window[len(context) :]
        self._prefix, self._read = self._read, len(self.ids)
        self._emitted.append(piece)
        return piece

    def finish(self) -> str:
        """The rest of the text once the sequence ended (one decode of the whole sequence)."""
        text = self.codec.decode(self.ids)
        emitted = "".join(self._emitted)
        piece = text[len(emitted) :] if text.startswith(emitted) else ""
        self._emitted = [text]
        self._prefix = self._read = len(self.ids)
        return piece
