"""Text to token ids and back, with the bundle's own `tokenizer.json`.

A bundle with separate source and target vocabularies (imported Marian models) also has a
`target_tokenizer`: `tokenizer.json` then only encodes the source and the target one decodes.
Both are plain `tokenizers` files, so serving needs neither sentencepiece nor torch.

`StreamDetokenizer` turns tokens into text pieces as they arrive. Byte-level BPE can split one
character over two tokens; a piece is held back while the decoded text ends in an incomplete
character, so the pieces of a stream always join to the full decoded text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

_INCOMPLETE = "\ufffd"


class TextCodec:
    def __init__(self, tokenizer_file: Path, eos_id: int, target_tokenizer_file: Path | None = None) -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.target_tokenizer = Tokenizer.from_file(str(target_tokenizer_file)) if target_tokenizer_file else self.tokenizer
        self.eos_id = eos_id

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Source token ids of each text, end-of-sequence appended."""
        return [e.ids + [self.eos_id] for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of target token ids, special tokens left out."""
        return self.target_tokenizer.decode(list(ids), skip_special_tokens=True)


class StreamDetokenizer:
    """Text pieces of one sequence as its tokens arrive."""

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        """Adds a token; returns the text that became complete (possibly empty)."""
        self.ids.append(token)
        text = self.codec.decode(self.ids)
        if text.endswith(_INCOMPLETE) or not text.startswith(self.emitted):
            return ""
        piece, self.emitted = text[len(self.emitted) :], text
        return piece

    def finish(self) -> str:
        """The rest of the text once the sequence ended."""
        text = self.codec.decode(self.ids)
        piece, self.emitted = text[len(self.emitted) :], text
        return piece
