"""Reading the built corpus and turning it into length-bucketed training batches."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from seqcast.export.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass(frozen=True)
class Pair:
    en: str
    de: str
    source: str


def read_split(corpus_dir: Path, split: str, limit: int | None = None) -> list[Pair]:
    """Reads `<corpus_dir>/<split>.jsonl.gz` (lines of {"en", "de", "source"})."""
    pairs = []
    with gzip.open(corpus_dir / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            pairs.append(Pair(row["en"], row["de"], row["source"]))
            if limit is not None and len(pairs) >= limit:
                break
    return pairs


@dataclass(frozen=True)
class EncodedPair:
    src: list[int]  # source tokens + </s>
    tgt: list[int]  # <s> + target tokens + </s>


def encode_pairs(pairs: list[Pair], tokenizer: Tokenizer, max_tokens: int) -> list[EncodedPair]:
    """Tokenizes pairs; drops pairs whose source or target exceeds max_tokens."""
    src = tokenizer.encode_batch([p.en for p in pairs])
    tgt = tokenizer.encode_batch([p.de for p in pairs])
    out = []
    for s, t in zip(src, tgt):
        if len(s.ids) + 1 <= max_tokens and len(t.ids) + 2 <= max_tokens + 1:
            out.append(EncodedPair(s.ids + [EOS_ID], [BOS_ID] + t.ids + [EOS_ID]))
    return out


def encode_sources(tokenizer: Tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Source ids (end-of-sequence appended) cut to max_tokens, the end-of-sequence kept.

    Cutting is for scoring and parity checks only; the server refuses over-long input.
    """
    return [e.ids[: max_tokens - 1] + [EOS_ID] for e in tokenizer.encode_batch(texts)]


@dataclass(frozen=True)
class Batch:
    src: torch.Tensor  # (B, S)
    src_mask: torch.Tensor  # (B, S)
    tgt_in: torch.Tensor  # (B, T): <s> y1 .. yn
    tgt_out: torch.Tensor  # (B, T): y1 .. yn </s>, pad where tgt_in is pad

    @property
    def target_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())


def collate(items: list[EncodedPair]) -> Batch:
    s_len = max(len(p.src) for p in items)
    t_len = max(len(p.tgt) for p in items) - 1
    src = torch.full((len(items), s_len), PAD_ID, dtype=torch.long)
    tgt = torch.full((len(items), t_len + 1), PAD_ID, dtype=torch.long)
    for i, p in enumerate(items):
        src[i, : len(p.src)] = torch.tensor(p.src)
        tgt[i, : len(p.tgt)] = torch.tensor(p.tgt)
    return Batch(src, (src != PAD_ID).long(), tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous())


def token_batches(data: list[EncodedPair], max_batch_tokens: int, rng: random.Random) -> Iterator[Batch]:
    """One epoch of batches of similar length, each at most ~max_batch_tokens padded tokens, shuffled."""
    order = sorted(range(len(data)), key=lambda i: (len(data[i].src), rng.random()))
    batches, current, longest = [], [], 0
    for i in order:
        longest_next = max(longest, len(data[i].src), len(data[i].tgt))
        if current and longest_next * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current, longest_next = [], max(len(data[i].src), len(data[i].tgt))
        current.append(i)
        longest = longest_next
    if current:
        batches.append(current)
    rng.shuffle(batches)
    for idx in batches:
        yield collate([data[i] for i in idx])
