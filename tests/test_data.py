"""The English->German corpus builder (export/translation/data.py) on small fixture catalogs."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import polib
import pytest

from seqcast.export.translation import data
from seqcast.export.translation.corpus import read_split

FIXTURES = Path(__file__).parent / "fixtures" / "po" / "sources"
ALPHA_PO = FIXTURES / "pypi/alpha/alpha/locale/de/LC_MESSAGES/django.po"
SMALL = data.SplitTargets(test=(1, 4), dev=(1, 4), trans_test=0.0, trans_dev=0.0, max_package=10)


def alpha_pairs() -> list[tuple[str, str]]:
    return list(data.catalog_pairs(polib.pofile(str(ALPHA_PO))))


@pytest.fixture()
def sources(tmp_path: Path) -> Path:
    """The fixture tree, with the Debian catalog compiled to .mo as Debian ships it."""
    root = tmp_path / "sources"
    shutil.copytree(FIXTURES, root)
    po = root / "debian/gamma/usr/share/locale/de/LC_MESSAGES/gamma.po"
    polib.pofile(str(po)).save_as_mofile(str(po.with_suffix(".mo")))
    po.unlink()
    return root


# --- gettext entries -------------------------------------------------------


def test_keeps_translated_entries_and_strips_context() -> None:
    pairs = alpha_pairs()
    assert ("Save", "Speichern") in pairs
    assert ("Open", "Öffnen") in pairs  # msgctxt "button label" is not part of the text


def test_drops_fuzzy_untranslated_and_obsolete_entries() -> None:
    ens = {en for en, _ in alpha_pairs()}
    assert "Delete everything" not in ens  # fuzzy
    assert "Not translated yet" not in ens  # empty msgstr
    assert "An obsolete string" not in ens  # #~ entry


def test_plural_entry_gives_singular_and_plural_pairs() -> None:
    pairs = alpha_pairs()
    assert ("%d file was deleted.", "%d Datei wurde gelöscht.") in pairs
    assert ("%d files were deleted.", "%d Dateien wurden gelöscht.") in pairs


def test_identical_single_token_kept_but_copied_phrase_and_no_letters_dropped() -> None:
    pairs = alpha_pairs()
    assert ("OK", "OK") in pairs
    ens = {en for en, _ in pairs}
    assert "Multi word copy" not in ens
    assert "12:30" not in ens


def test_placeholders_and_markup_preserved_byte_for_byte() -> None:
    en = "Hello %(name)s, you have {count} new <b>messages</b> &amp; %s alerts in {0}."
    de = "Hallo %(name)s, Sie haben {count} neue <b>Nachrichten</b> &amp; %s Warnungen in {0}."
    assert (en, de) in alpha_pairs()


def test_newlines_and_space_runs_collapse_outside_markup() -> None:
    pairs = dict(alpha_pairs())
    assert pairs['A long line that wraps <a href="https://example.org/">here</a>.'] == (
        'Eine lange Zeile, die hier <a href="https://example.org/">umbricht</a>.'
    )
    assert data.normalize("  %(a)s \n\t {b}  <i>x</i>  ") == "%(a)s {b} <i>x</i>"


def test_check_pair_rules() -> None:
    assert data.check_pair("File", "Datei") is None
    assert data.check_pair("File", "") == "untranslated"
    assert data.check_pair("x" * 401, "y") == "too_long"
    assert data.check_pair("Bell\x07", "Glocke\x07") == "control_chars"
    assert data.check_pair("Open %s", "Öffnen") == "placeholder_mismatch"
    assert data.check_pair("%s of %s", "%2$s von %1$s") is None  # reordered slots


def test_mo_catalogs_read_like_po(sources: Path) -> None:
    mo = sources / "debian/gamma/usr/share/locale/de/LC_MESSAGES/gamma.mo"
    pairs = list(data.catalog_pairs(data.read_catalog(mo)))
    assert ("cannot open %s", "%s kann nicht geöffnet werden") in pairs


def test_find_catalogs_prefers_de_over_de_ch() -> None:
    found = data.find_catalogs(FIXTURES / "pypi/alpha")
    assert found == [ALPHA_PO]
    assert data.find_catalogs(FIXTURES / "pypi/beta") == [FIXTURES / "pypi/beta/beta/locale/de.po"]


# --- trans-de-en ------------------------------------------------------------


def test_trans_line_keeps_aligned_phrases_without_markup() -> None:
    line = "in Zeitlupe; im Zeitlupentempo | etw. in Zeitlupe zeigen | die Szene in Zeitlupe :: in slow motion | to show sth. in slow motion | the scene in slow motion"
    assert data.trans_line_pairs(line) == [("in slow motion", "in Zeitlupe"), ("the scene in slow motion", "die Szene in Zeitlupe")]
    assert data.trans_line_pairs("Es regnet in Strömen. [ugs.] :: It's raining cats and dogs. [coll.]") == [
        ("It's raining cats and dogs.", "Es regnet in Strömen.")
    ]
    assert data.trans_line_pairs("Aal {m} [cook.] | Aale {pl} :: eel | eels") == []  # headwords
    assert data.trans_line_pairs("Ich habe alles bis auf das Dessert gegessen. :: I ate everything apart from/except the dessert.") == []


# --- deduplication and splits ----------------------------------------------


def test_deduplicate_keeps_first_exact_pair() -> None:
    a, b, c = data.Pair("Save", "Speichern", "a", "a"), data.Pair("Save", "Speichern", "b", "b"), data.Pair("Save", "Sichern", "b", "b")
    assert data.deduplicate([a, b, c]) == [a, c]


def _synthetic_pairs() -> list:
    pairs = []
    for i in range(12):
        pairs += [data.Pair(f"text {i}-{j}", f"Text {i}-{j}", f"pkg{i}", f"pkg{i}") for j in range(3)]
    for line in range(40):
        pairs.append(data.Pair(f"a phrase {line}", f"eine Phrase {line}", data.TRANS_SOURCE, f"{data.TRANS_SOURCE}:{line}"))
        pairs.append(data.Pair(f"the phrase {line}", f"die Phrase {line}", data.TRANS_SOURCE, f"{data.TRANS_SOURCE}:{line}"))
    pairs.append(data.Pair("text 0-0", "Anderer Text", "pkg99", "pkg99"))  # same English, other package
    return pairs


def test_split_is_deterministic_and_groups_never_cross_splits() -> None:
    pairs = _synthetic_pairs()
    targets = data.SplitTargets(test=(5, 8), dev=(3, 6), trans_test=0.1, trans_dev=0.1, max_package=10)
    first = data.assign_splits(pairs, seed=7, targets=targets)
    assert first == data.assign_splits(pairs, seed=7, targets=targets)
    owner: dict[str, str] = {}
    for split, items in first.items():
        for pair in items:
            assert owner.setdefault(pair.group, split) == split
    assert len(first["test"]) >= 5 and len(first["dev"]) >= 3
    assert any(p.origin == data.TRANS_SOURCE for p in first["train"])

    packages_only = data.assign_splits(pairs, seed=7, targets=data.SplitTargets(test=(5, 8), dev=(3, 6), trans_test=0.0, trans_dev=0.0))
    assert {p.origin for p in packages_only["test"]} and 5 <= len(packages_only["test"]) <= 8
    assert data.TRANS_SOURCE not in {p.origin for p in packages_only["test"] + packages_only["dev"]}


def test_held_out_english_never_in_train() -> None:
    splits = data.assign_splits(_synthetic_pairs(), seed=3, targets=data.SplitTargets(test=(3, 3), dev=(3, 3), max_package=3))
    held_out = {p.source for p in splits["test"] + splits["dev"]}
    assert held_out and not held_out & {p.source for p in splits["train"]}
    assert not {p.source for p in splits["test"]} & {p.source for p in splits["dev"]}


# --- the whole build ---------------------------------------------------------


def test_build_corpus_writes_reproducible_splits(sources: Path, tmp_path: Path) -> None:
    stats = data.build_corpus(sources, tmp_path / "a", seed=0, targets=SMALL)
    data.build_corpus(sources, tmp_path / "b", seed=0, targets=SMALL)
    for name in ("train.jsonl.gz", "dev.jsonl.gz", "test.jsonl.gz", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    rows = {split: read_split(tmp_path / "a", split) for split in data.SPLITS}
    assert {len(v) for v in rows.values()} and sum(map(len, rows.values())) == stats.total
    sources_by_split = {split: {r.origin for r in v} for split, v in rows.items()}
    packages = {"alpha", "beta", "gamma"}
    for a in data.SPLITS:
        for b in data.SPLITS:
            if a != b:
                assert not (sources_by_split[a] & sources_by_split[b] & packages)
    all_rows = [r for v in rows.values() for r in v]
    with gzip.open(tmp_path / "a" / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        assert set(json.loads(f.readline())) == {"en", "de", "source"}
    assert len({(r.source, r.target) for r in all_rows}) == len(all_rows)
    assert ("Street", "Strasse") not in {(r.source, r.target) for r in all_rows}  # de_CH skipped
    assert {"It's raining cats and dogs.", "to go to the other extreme"} <= {r.source for r in all_rows}

    written = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert written["total"] == stats.total == sum(written["splits"].values())
    assert sum(sum(c.values()) for c in written["sources"].values()) == stats.total
    assert written["dropped"]["fuzzy"] == 1 and written["dropped"]["obsolete"] == 1
