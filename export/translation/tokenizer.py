"""Subword tokenizer: byte-level BPE with one vocabulary shared by English and German.

Byte-level BPE never produces an unknown token and decodes back to exactly the input text, so
placeholders such as `%(name)s`, `{0}` or `<b>` survive a round trip. The server loads the same
`tokenizer.json` the model was trained with.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Fixed ids: the model and the manifest rely on them.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_file: Path) -> Tokenizer:
    """Trains byte-level BPE on `texts` (both languages) and saves it as tokenizer.json."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=True,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for token, expected in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS))):
        assert tokenizer.token_to_id(token) == expected, f"special token {token} must have id {expected}"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_file))
    return tokenizer
