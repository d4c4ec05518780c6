"""Training on a user's own parallel text: a TSV file or two aligned text files, split into
train, dev and test by the corpus module's held-out rule, trained, exported and served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqcast.client import SeqcastClient
from seqcast.export.cli import main as seqcast
from seqcast.export.translation.corpus import HELD_OUT_SHARE, read_split

from conftest import CORPUS, start_server

# A few hundred real pairs, as a user's file would hold them; repeated sources test the split.
PAIRS = read_split(CORPUS, "train", 400)
MICRO = ["--vocab-size", "300", "--d-model", "32", "--n-heads", "2", "--layers", "1", "--d-ff", "64",
         "--batch-tokens", "800", "--warmup-steps", "2", "--steps", "4", "--eval-every", "4", "--threads", "1",
         "--max-tokens", "48", "--no-bf16"]


def _tsv(path: Path) -> Path:
    path.write_text("".join(f"{p.source}\t{p.target}\n" for p in [*PAIRS, *PAIRS[:20]]), encoding="utf-8")
    return path


def _aligned(folder: Path) -> tuple[Path, Path]:
    source, target = folder / "train.en", folder / "train.de"
    source.write_text("".join(f"{p.source}\n" for p in PAIRS), encoding="utf-8")
    target.write_text("".join(f"{p.target}\n" for p in PAIRS), encoding="utf-8")
    return source, target


def test_user_text_splits_are_disjoint_by_source_and_the_same_on_every_read(tmp_path: Path) -> None:
    tsv = _tsv(tmp_path / "pairs.tsv")
    splits = {name: read_split(tsv, name) for name in ("train", "dev", "test")}
    sources = {name: {p.source for p in pairs} for name, pairs in splits.items()}
    distinct = len({p.source for p in PAIRS})
    assert len(sources["dev"]) == len(sources["test"]) == round(distinct * HELD_OUT_SHARE)
    assert not (sources["train"] & sources["dev"]) and not (sources["train"] & sources["test"])
    assert not (sources["dev"] & sources["test"])
    assert sum(map(len, splits.values())) == len(PAIRS) + 20  # every pair lands in one split
    assert read_split(tsv, "dev") == splits["dev"]
    # The same pairs as aligned files split the same way.
    assert {p.source for p in read_split(_aligned(tmp_path), "test")} == sources["test"]


@pytest.mark.parametrize(("write", "message"), [
    (lambda d: (d / "a.tsv").write_text("one\ttwo\nno tab here\n"), "a.tsv:2: expected source<TAB>target, found 1 tab-separated field"),
    (lambda d: (d / "a.tsv").write_text("a\tb\tc\n"), "a.tsv:1: expected source<TAB>target, found 3 tab-separated fields"),
    (lambda d: (d / "a.tsv").write_bytes(b"a\tb\n\xff\xfe\tc\n"), "a.tsv:2: not UTF-8 text"),
    (lambda d: (d / "a.tsv").write_text("a\tb\na\tc\n"), "at least 3 distinct source sentences for train, dev and test; it has 1"),
])
def test_a_malformed_tsv_is_refused_with_its_file_and_line(tmp_path: Path, write, message: str) -> None:
    write(tmp_path)
    with pytest.raises(ValueError) as raised:
        read_split(tmp_path / "a.tsv", "train")
    assert message in str(raised.value)


def test_aligned_files_of_different_lengths_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = _aligned(tmp_path)
    target.write_text("".join(f"{p.target}\n" for p in PAIRS[:-3]), encoding="utf-8")
    code = seqcast(["--log-level", "WARNING", "train", "--run-dir", str(tmp_path / "run"), *MICRO,
                    "--corpus", str(source), str(target)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"aligned files differ in length: {source} has {len(PAIRS)} lines, {target} has {len(PAIRS) - 3}" in err


def test_parallel_text_in_both_layouts_trains_exports_and_serves(tmp_path: Path) -> None:
    models = tmp_path / "models"
    layouts = {"tsv-fr-en": [str(_tsv(tmp_path / "pairs.tsv"))], "aligned-fr-en": [str(p) for p in _aligned(tmp_path)]}
    for name, corpus in layouts.items():
        run = tmp_path / name
        assert seqcast(["--log-level", "WARNING", "train", "--run-dir", str(run), *MICRO, "--corpus", *corpus,
                        "--source-language", "fr", "--target-language", "en"]) == 0
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["test_pairs"] == len(read_split([Path(p) for p in corpus], "test")) > 0
        assert seqcast(["--log-level", "WARNING", "export", "--run-dir", str(run), "--models-dir", str(models),
                        "--name", name]) == 0
        manifest = json.loads((models / name / "1" / "manifest.json").read_text())
        assert (manifest["source_language"], manifest["target_language"]) == ("fr", "en")
        assert manifest["training"]["corpus"] == (corpus[0] if len(corpus) == 1 else corpus)
    server = start_server(models, default_model="tsv-fr-en", default_forecast_model="")
    try:
        with SeqcastClient(server.target) as client:
            for name in layouts:
                results = client.translate(["Open file", "(excluded)"], model=name, max_new_tokens=5)
                assert len(results) == 2 and all(0 < r.output_tokens <= 5 and r.input_tokens > 0 for r in results)
    finally:
        server.stop()
