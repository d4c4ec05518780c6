"""Converting a Marian tokenizer (SentencePiece models + vocab.json) into `tokenizers` files.

`MarianTokenizer` segments the source with source.spm (a SentencePiece unigram model) and maps
each piece to an id through vocab.json, appending `</s>`; it decodes ids back to pieces
through vocab.json (target_vocab.json with separate vocabularies) and joins them the
SentencePiece way (`▁` is a space, the leading one dropped). The conversion, run once at import,
writes two files the server reads with the `tokenizers` library alone:

  * `tokenizer.json` encodes the source: a Unigram model whose entry i is vocab.json's id i.
    Entries that are source.spm pieces keep their spm scores, so Viterbi segmentation is the
    same as sentencepiece's; the others (target-language pieces of a joint vocabulary) are
    renamed to strings containing a space, which cannot occur after the Metaspace
    pre-tokenizer, so they are never produced; but single characters source.spm does not know
    stay matchable, as MarianTokenizer looks up the text of spm's unknown pieces in vocab.json.
    (One difference remains: spm merges a run of unknown characters into one piece, so
    MarianTokenizer looks up the run, where the converted tokenizer takes each character.) The
    normalizer is source.spm's own compiled character map followed by its whitespace rules.
  * `target_tokenizer.json` decodes: every id's piece, the Metaspace decoder, and the special
    tokens marked special so decoding skips them as `MarianTokenizer.decode(skip_special_tokens=True)`
    does.

A model the conversion cannot reproduce exactly (BPE or byte-fallback SentencePiece, a source
piece missing from vocab.json) is refused with the reason.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from seqcast.export.translation.hf_checkpoint import ImportRefused

log = logging.getLogger(__name__)

SOURCE_FILE = "tokenizer.json"
TARGET_FILE = "target_tokenizer.json"
_SPACE = "▁"
_UNIGRAM = 1
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
_LANGUAGE_CODE = re.compile(r"^>>.+<<$")


@dataclass(frozen=True)
class SpmModel:
    """What the conversion needs from a SentencePiece model file."""

    pieces: dict[str, tuple[float, int]]  # piece -> (score, type)
    charsmap: bytes
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    split_by_whitespace: bool


def read_spm(path: Path) -> SpmModel:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError, or a file that is not one
        raise ImportRefused(f"{path.name} is not a SentencePiece model ({e})") from None
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != _UNIGRAM:
        raise ImportRefused(f"{path.name}: SentencePiece model type {trainer.model_type} is not unigram; only unigram models convert exactly")
    if trainer.byte_fallback:
        raise ImportRefused(f"{path.name}: byte_fallback SentencePiece models are not supported")
    if trainer.treat_whitespace_as_suffix:
        raise ImportRefused(f"{path.name}: treat_whitespace_as_suffix is not supported")
    return SpmModel(
        pieces={p.piece: (p.score, p.type) for p in proto.pieces},
        charsmap=norm.precompiled_charsmap,
        add_dummy_prefix=norm.add_dummy_prefix,
        remove_extra_whitespaces=norm.remove_extra_whitespaces,
        split_by_whitespace=trainer.split_by_whitespace,
    )


def _read_vocab(path: Path) -> list[str]:
    """vocab.json's pieces in id order; ids must be 0..N-1."""
    vocab: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ImportRefused(f"{path.name}: ids are not 0..{len(by_id) - 1} without gaps")
    return [piece for piece, _ in by_id]


def _special_tokens(tokenizer_config: dict[str, Any]) -> list[str]:
    """MarianTokenizer's special tokens: eos, unk, pad and any additional ones."""

    def content(value: Any) -> str | None:
        return value.get("content") if isinstance(value, dict) else value

    names = [content(tokenizer_config.get(k, d)) for k, d in (("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "<pad>"))]
    names += [content(t) for t in tokenizer_config.get("additional_special_tokens") or []]
    return [n for n in names if n]


def _normalizer(spm: SpmModel) -> normalizers.Normalizer:
    steps: list[normalizers.Normalizer] = []
    if spm.charsmap:
        steps.append(normalizers.Precompiled(spm.charsmap))
    if spm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    return normalizers.Sequence(steps)


def _metaspace(spm: SpmModel) -> tuple[pre_tokenizers.PreTokenizer, decoders.Decoder]:
    scheme = "always" if spm.add_dummy_prefix else "never"
    return (
        pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme=scheme, split=spm.split_by_whitespace),
        decoders.Metaspace(replacement=_SPACE, prepend_scheme=scheme, split=spm.split_by_whitespace),
    )


def _add_specials(tokenizer: Tokenizer, pieces: list[str], specials: list[str]) -> None:
    present = [s for s in specials if s in pieces]
    tokenizer.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in present])


def source_tokenizer(spm: SpmModel, vocab: list[str], specials: list[str]) -> Tokenizer:
    """Encodes like MarianTokenizer's source side: source.spm segmentation, vocab.json ids."""
    in_vocab = set(vocab)
    missing = [p for p, (_, kind) in spm.pieces.items() if kind in (_NORMAL, _USER_DEFINED) and p not in in_vocab]
    if missing:
        raise ImportRefused(
            f"source.spm has {len(missing)} pieces that vocab.json lacks (e.g. {missing[:3]}); "
            "MarianTokenizer would map them to <unk>, which a converted tokenizer cannot reproduce"
        )
    floor = min((score for score, kind in spm.pieces.values() if kind == _NORMAL), default=0.0)
    entries = []
    for i, piece in enumerate(vocab):
        score, kind = spm.pieces.get(piece, (None, None))
        if kind in (_NORMAL, _USER_DEFINED, _UNKNOWN):
            entries.append((piece, float(score)))
        elif len(piece) == 1 and piece not in specials:
            # A character source.spm does not know: spm emits it as an unknown piece whose text
            # MarianTokenizer then finds in the joint vocab.json. Matchable, but no source piece
            # covers that character, so it is chosen exactly where spm has an unknown.
            entries.append((piece, floor - 1.0))
        else:  # never produced by the source side: a name no pre-tokenized text contains
            entries.append((f"{piece} #{i}", floor))
    unk = vocab.index("<unk>") if "<unk>" in vocab else None
    tokenizer = Tokenizer(models.Unigram(entries, unk_id=unk, byte_fallback=False))
    tokenizer.normalizer = _normalizer(spm)
    tokenizer.pre_tokenizer, tokenizer.decoder = _metaspace(spm)
    _add_specials(tokenizer, vocab, specials)
    codes = [p for p in vocab if _LANGUAGE_CODE.match(p)]
    if codes:  # `>>deu<<` target-language tokens of multilingual models, kept whole
        tokenizer.add_tokens([AddedToken(c, normalized=False, special=False) for c in codes])
    return tokenizer


def target_tokenizer(spm: SpmModel, vocab: list[str], specials: list[str]) -> Tokenizer:
    """Decodes like MarianTokenizer.decode(skip_special_tokens=True): vocab pieces joined the spm way."""
    unk = vocab.index("<unk>") if "<unk>" in vocab else None
    tokenizer = Tokenizer(models.Unigram([(p, 0.0) for p in vocab], unk_id=unk, byte_fallback=False))
    tokenizer.normalizer = _normalizer(spm)
    tokenizer.pre_tokenizer, tokenizer.decoder = _metaspace(spm)
    _add_specials(tokenizer, vocab, specials)
    return tokenizer


def convert_tokenizers(checkpoint_dir: Path, separate_vocabs: bool) -> tuple[Tokenizer, Tokenizer]:
    """The source (encoding) and target (decoding) tokenizers of a Marian checkpoint directory,
    to be saved as SOURCE_FILE and TARGET_FILE."""
    config_path = checkpoint_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    specials = _special_tokens(config)
    source_vocab = _read_vocab(checkpoint_dir / "vocab.json")
    target_vocab = _read_vocab(checkpoint_dir / "target_vocab.json") if separate_vocabs else source_vocab
    # MarianTokenizer decodes with the target spm given separate vocabularies, else the source one.
    source_spm = read_spm(checkpoint_dir / "source.spm")
    decode_spm = read_spm(checkpoint_dir / "target.spm") if separate_vocabs else source_spm
    log.info("converting the tokenizer: %d source ids, %d target ids", len(source_vocab), len(target_vocab))
    return source_tokenizer(source_spm, source_vocab, specials), target_tokenizer(decode_spm, target_vocab, specials)
