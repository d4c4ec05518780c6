"""Reading a parallel corpus and turning it into length-bucketed training batches.

A corpus is one of:

* a built corpus directory (`seqcast data`): `train.jsonl.gz`, `dev.jsonl.gz` and
  `test.jsonl.gz`, lines of {"en", "de", "source"};
* a TSV file, one `source<TAB>target` pair per line;
* two aligned plain-text files, line n of the first (source) translated by line n of the second.

User text has no splits of its own, so dev and test are held out by one fixed rule: distinct
source sentences ordered by a hash of their text, the first 2% (at least 1, at most 1,000) are
dev, the next as many test, and training keeps every pair whose source is in neither. The rule
needs no seed, gives the same splits on every read, and keeps a sentence repeated in the file on
one side of the split.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from seqcast.export.translation.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass(frozen=True)
class Pair:
    """One sentence pair: the source text, its translation, and where it comes from (a package
    name, trans-de-en, or the user's file name). The built en-de corpus stores them as "en",
    "de" and "source"."""

    source: str
    target: str
    origin: str
    # The unit the corpus builder splits by (a package, or one dictionary line); not written.
    group: str = ""


SPLITS = ("train", "dev", "test")
HELD_OUT_SHARE, HELD_OUT_MAX = 0.02, 1000


def read_split(corpus: Path | Sequence[Path], split: str, limit: int | None = None) -> list[Pair]:
    """The pairs of one split ("train", "dev" or "test") of a corpus, the first `limit` of them.

    Raises ValueError naming the file (and line) when the corpus cannot be read as parallel text.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    paths = [Path(corpus)] if isinstance(corpus, (str, Path)) else [Path(p) for p in corpus]
    if len(paths) == 1 and paths[0].is_dir():
        pairs = _read_built_split(paths[0] / f"{split}.jsonl.gz", limit)
    else:
        pairs = list(_held_out_splits(tuple(_identity(p) for p in paths))[split])
    return pairs if limit is None else pairs[:limit]


def _read_built_split(path: Path, limit: int | None) -> list[Pair]:
    if not path.is_file():
        raise ValueError(f"{path} is missing: a corpus directory holds train, dev and test .jsonl.gz files "
                         "(`seqcast data` writes them)")
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            pairs.append(Pair(row["en"], row["de"], row["source"]))
            if limit is not None and len(pairs) >= limit:
                break
    return pairs


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory without train/dev/test.jsonl.gz files") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text") from None
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_parallel_text(paths: Sequence[Path]) -> list[Pair]:
    """Every pair of a TSV file, or of two aligned text files; lines with an empty side are skipped."""
    if len(paths) == 1:
        pairs = []
        for number, line in enumerate(_lines(paths[0]), 1):
            fields = line.rstrip("\r").split("\t")
            if len(fields) != 2:
                raise ValueError(f"{paths[0]}:{number}: expected source<TAB>target, found {len(fields)} "
                                 f"tab-separated field{'s' if len(fields) != 1 else ''}")
            pairs.append(Pair(fields[0].strip(), fields[1].strip(), paths[0].name))
    elif len(paths) == 2:
        sources, targets = _lines(paths[0]), _lines(paths[1])
        if len(sources) != len(targets):
            raise ValueError(f"aligned files differ in length: {paths[0]} has {len(sources)} lines, "
                             f"{paths[1]} has {len(targets)}")
        pairs = [Pair(s.strip(), t.strip(), paths[0].name) for s, t in zip(sources, targets)]
    else:
        raise ValueError(f"a corpus is one directory or TSV file, or two aligned text files; got {len(paths)} paths")
    return [p for p in pairs if p.source and p.target]


def _identity(path: Path) -> tuple[str, int, int]:
    """A file as the split cache knows it: path, modification time and size (a changed file is
    read again); a file that can't be stat'ed is left for the read to report."""
    try:
        stat = path.stat()
    except OSError:
        return str(path), 0, -1
    return str(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _held_out_splits(files: tuple[tuple[str, int, int], ...]) -> dict[str, tuple[Pair, ...]]:
    """The module docstring's rule, applied once per file version: dev and test are distinct
    sources chosen by a hash of their text. Training reads all three splits; the file is read once."""
    pairs = read_parallel_text([Path(name) for name, _, _ in files])
    distinct = sorted({p.source for p in pairs}, key=lambda text: hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest())
    if len(distinct) < 3:
        raise ValueError(f"a corpus needs at least 3 distinct source sentences for train, dev and test; it has {len(distinct)}")
    n = max(1, min(round(len(distinct) * HELD_OUT_SHARE), HELD_OUT_MAX))
    dev, test = set(distinct[:n]), set(distinct[n : 2 * n])
    return {
        "train": tuple(p for p in pairs if p.source not in dev and p.source not in test),
        "dev": tuple(p for p in pairs if p.source in dev),
        "test": tuple(p for p in pairs if p.source in test),
    }


@dataclass(frozen=True)
class EncodedPair:
    src: list[int]  # source tokens + </s>
    tgt: list[int]  # <s> + target tokens + </s>


def encode_pairs(pairs: list[Pair], tokenizer: Tokenizer, max_tokens: int) -> list[EncodedPair]:
    """Tokenizes pairs; drops pairs whose source or target exceeds max_tokens."""
    src = tokenizer.encode_batch([p.source for p in pairs])
    tgt = tokenizer.encode_batch([p.target for p in pairs])
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
