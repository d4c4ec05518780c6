"""Random-weight Marian checkpoints laid out exactly as OPUS-MT's, for tests and benchmarks.

SentencePiece unigram models are trained on corpus text (source on English, target on German),
vocab.json is OPUS-MT's joint layout (`</s>` 0, `<unk>` 1, the pieces, filler up to the size
asked for, `<pad>` last), the tokenizer is saved by `MarianTokenizer.save_pretrained` and the
model by `MarianMTModel.save_pretrained`, with a generation_config.json like OPUS-MT's
(pad never generated, forced eos, beams). Weights are seeded; their scale is raised above
transformers' init (std 0.02) so that greedy and beam decoding pick real, varied tokens instead
of near ties, an eos bias makes sentences end at varied lengths, and `<pad>` gets the very
low logit a trained model gives it (generation masks it out; with a likely pad, masking
renormalises beam scores differently in transformers and in seqcast, see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RandomMarian:
    d_model: int = 32
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ffn: int = 64
    # Total ids in vocab.json, <pad> included (last); None: just the pieces, specials and <pad>.
    vocab_size: int | None = None
    spm_vocab: int = 500
    max_position_embeddings: int = 128
    activation: str = "swish"
    scale_embedding: bool = True
    separate_vocabs: bool = False
    eos_bias: float = 2.2
    # An untied output layer: with random weights, a tied one mostly repeats the fed token.
    tie_word_embeddings: bool = False
    seed: int = 0


def train_spm(texts: list[str], vocab_size: int, prefix: Path) -> Path:
    """A SentencePiece unigram model on `texts` (OPUS-MT's normalisation, nmt_nfkc), at prefix.model."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, num_threads=2, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    )
    return prefix.with_suffix(".model")


def _pieces(model: Path) -> list[str]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]


def _vocab(pieces: list[str], size: int | None) -> dict[str, int]:
    """OPUS-MT's layout: </s> 0, <unk> 1, pieces, filler, <pad> last."""
    ordered = ["</s>", "<unk>"] + list(dict.fromkeys(pieces))
    if size is not None:
        if size < len(ordered) + 1:
            raise ValueError(f"vocab_size {size} is below the {len(ordered) + 1} pieces and specials")
        ordered += [f"▁filler{i}" for i in range(size - len(ordered) - 1)]
    return {piece: i for i, piece in enumerate(ordered + ["<pad>"])}


def _randomize(model: Any, spec: RandomMarian) -> None:
    torch.manual_seed(spec.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))
            elif "layer_norm" in name and name.endswith("weight"):
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 0.1)
        # The pad row stays zero, as nn.Embedding's padding_idx keeps it in a trained model: the
        # decoder starts from the pad id, and CTranslate2 starts from a zero embedding instead.
        pad = model.config.pad_token_id
        for embedding in {id(e): e for e in (model.model.encoder.embed_tokens, model.model.decoder.embed_tokens)}.values():
            embedding.weight[pad].zero_()
        bias = torch.randn_like(model.final_logits_bias) * 0.5
        bias[0, model.config.eos_token_id] += spec.eos_bias
        # As in a trained OPUS-MT model, <pad> (never a training target) is all but impossible.
        bias[0, model.config.pad_token_id] = -30.0
        model.final_logits_bias.copy_(bias)


def build_random_marian(out_dir: Path, english: list[str], german: list[str], spec: RandomMarian = RandomMarian()) -> Path:
    """Writes a complete Marian checkpoint directory (model, tokenizer, generation config) to out_dir."""
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".spm"
    work.mkdir(exist_ok=True)
    source = train_spm(english, spec.spm_vocab, work / "source")
    target = train_spm(german, spec.spm_vocab, work / "target")
    if spec.separate_vocabs:
        # Both vocabularies the same size, so <pad> (the decoder start) is one id on both sides.
        size = spec.vocab_size or max(len(set(_pieces(source))), len(set(_pieces(target)))) + 3
        vocab, target_vocab = _vocab(_pieces(source), size), _vocab(_pieces(target), size)
    else:
        vocab = target_vocab = _vocab(_pieces(source) + _pieces(target), spec.vocab_size)
    (work / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (work / "target_vocab.json").write_text(json.dumps(target_vocab, ensure_ascii=False))
    tokenizer = MarianTokenizer(
        source_spm=str(source), target_spm=str(target), vocab=str(work / "vocab.json"),
        target_vocab_file=str(work / "target_vocab.json") if spec.separate_vocabs else None,
        separate_vocabs=spec.separate_vocabs, source_lang="en", target_lang="de",
    )
    tokenizer.save_pretrained(str(out_dir))

    pad = vocab["<pad>"]
    config = MarianConfig(
        vocab_size=len(vocab), decoder_vocab_size=len(target_vocab), d_model=spec.d_model,
        encoder_layers=spec.encoder_layers, decoder_layers=spec.decoder_layers,
        encoder_attention_heads=spec.heads, decoder_attention_heads=spec.heads,
        encoder_ffn_dim=spec.ffn, decoder_ffn_dim=spec.ffn, max_position_embeddings=spec.max_position_embeddings,
        activation_function=spec.activation, scale_embedding=spec.scale_embedding,
        share_encoder_decoder_embeddings=not spec.separate_vocabs,
        pad_token_id=pad, eos_token_id=0, decoder_start_token_id=target_vocab["<pad>"], forced_eos_token_id=0,
        dropout=0.1, tie_word_embeddings=spec.tie_word_embeddings,
    )
    model = MarianMTModel(config)
    _randomize(model, spec)
    gen = model.generation_config
    gen.bad_words_ids, gen.max_length, gen.num_beams = [[target_vocab["<pad>"]]], spec.max_position_embeddings, 4
    gen.decoder_start_token_id, gen.pad_token_id, gen.eos_token_id, gen.forced_eos_token_id = target_vocab["<pad>"], pad, 0, 0
    model.save_pretrained(str(out_dir))
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    log.info("random Marian written to %s (%d source ids, %d target ids)", out_dir, len(vocab), len(target_vocab))
    return out_dir
