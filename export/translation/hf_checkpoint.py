"""Reading a local Hugging Face Marian (OPUS-MT) checkpoint directory, and refusing what we cannot honour.

A checkpoint is what `MarianMTModel.save_pretrained` and `MarianTokenizer.save_pretrained` write:
config.json, the weights (model.safetensors, or pytorch_model.bin loaded weights-only),
generation_config.json (optional), source.spm, target.spm, vocab.json (and target_vocab.json
with separate vocabularies), tokenizer_config.json. Every check runs before anything is
exported, and each refusal names the file or config field and says what to do. Nothing is ever
fetched from a hub: the model is loaded with `local_files_only` and the hub set offline.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Activations the export wrappers implement exactly as transformers' ACT2FN does.
ACTIVATIONS = ("relu", "gelu", "gelu_new", "swish", "silu")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json")

# Legacy config fields (from the BART-style Marian conversion) that change the architecture:
# the value the Marian architecture needs, and why another one cannot be honoured.
_REQUIRED_FLAGS = {
    "normalize_before": (False, "pre-layer-norm blocks are not Marian's post-layer-norm"),
    "add_final_layer_norm": (False, "a final layer norm is not part of Marian"),
    "normalize_embedding": (False, "a layer norm on the embeddings is not part of Marian"),
    "add_bias_logits": (False, "a learned logits bias beside final_logits_bias is not supported"),
    "static_position_embeddings": (True, "learned position embeddings are not Marian's sinusoidal table"),
    "is_decoder": (False, "a decoder-only Marian is not an encoder-decoder"),
}


class ImportRefused(Exception):
    """The directory is not a checkpoint the importer can honour; the message says why and what to do."""


@dataclass(frozen=True)
class GenerationSettings:
    """What generation_config.json (or config.json) says about decoding."""

    decoder_start: int
    eos: int
    pad: int
    max_length: int
    num_beams: int
    length_penalty: float
    # Single tokens generation must never produce (OPUS-MT: the pad id); masked in the graph.
    suppressed: tuple[int, ...]


@dataclass(frozen=True)
class MarianCheckpoint:
    directory: Path
    config: Any  # transformers.MarianConfig
    generation: GenerationSettings
    weights_file: str
    separate_vocabs: bool

    @property
    def encoder_vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def decoder_vocab_size(self) -> int:
        cfg = self.config
        return int(cfg.vocab_size if cfg.share_encoder_decoder_embeddings else cfg.decoder_vocab_size)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImportRefused(f"{path.name} is missing in {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImportRefused(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ImportRefused(f"{path} must hold a JSON object")
    return data


def check_config(raw: dict[str, Any]) -> None:
    """Refuses a config.json the Marian export wrappers cannot reproduce exactly."""
    model_type = raw.get("model_type")
    if model_type != "marian":
        raise ImportRefused(
            f"config.json: model_type is {model_type!r}, not 'marian'; import-hf takes MarianMTModel "
            "checkpoints (OPUS-MT) only"
        )
    for field, (needed, why) in _REQUIRED_FLAGS.items():
        if field in raw and bool(raw[field]) != needed:
            raise ImportRefused(f"config.json: {field} is {raw[field]!r}, import-hf needs {needed}: {why}")
    activation = raw.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise ImportRefused(f"config.json: activation_function {activation!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    d_model = int(raw.get("d_model", 1024))
    for field in ("encoder_attention_heads", "decoder_attention_heads"):
        heads = int(raw.get(field, 16))
        if d_model % heads:
            raise ImportRefused(f"config.json: d_model {d_model} is not divisible by {field} {heads}")
    if raw.get("encoder_attention_heads") != raw.get("decoder_attention_heads"):
        raise ImportRefused("config.json: encoder_attention_heads and decoder_attention_heads differ; the bundle contract needs one head count")
    if d_model % 2:
        raise ImportRefused(f"config.json: d_model {d_model} is odd; Marian's sinusoidal table needs an even width")
    eos = raw.get("eos_token_id", 0)
    if not isinstance(eos, int):
        raise ImportRefused(f"config.json: eos_token_id {eos!r} must be a single id")


def _generation(directory: Path, config: Any) -> GenerationSettings:
    path = directory / "generation_config.json"
    gen = _read_json(path) if path.exists() else {}

    def pick(key: str, default: Any) -> Any:
        value = gen.get(key, getattr(config, key, None))
        return default if value is None else value

    pad = int(config.pad_token_id)
    start = int(pick("decoder_start_token_id", pad))
    eos = pick("eos_token_id", config.eos_token_id)
    if isinstance(eos, list):
        if len(eos) != 1:
            raise ImportRefused(f"generation_config.json: eos_token_id {eos} must be a single id")
        eos = eos[0]
    bad = pick("bad_words_ids", [])
    if any(len(word) != 1 for word in bad):
        raise ImportRefused(f"generation_config.json: bad_words_ids {bad} has multi-token entries; only single tokens are supported")
    return GenerationSettings(
        decoder_start=start,
        eos=int(eos),
        pad=pad,
        max_length=int(pick("max_length", config.max_position_embeddings)),
        num_beams=int(pick("num_beams", 1)),
        length_penalty=float(pick("length_penalty", 1.0)),
        # Marian never emits pad (HF generate suppresses it through bad_words_ids on OPUS-MT).
        suppressed=tuple(sorted({pad, *(int(w[0]) for w in bad)})),
    )


def _check_files(directory: Path, tokenizer_config: dict[str, Any]) -> str:
    if not directory.is_dir():
        raise ImportRefused(f"{directory} is not a directory")
    weights = [name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not weights:
        raise ImportRefused(
            f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)} "
            "(as MarianMTModel.save_pretrained writes them)"
        )
    needed = list(TOKENIZER_FILES) + (["target_vocab.json"] if tokenizer_config.get("separate_vocabs") else [])
    for name in needed:
        if not (directory / name).is_file():
            raise ImportRefused(f"{name} is missing in {directory}: save the tokenizer there with MarianTokenizer.save_pretrained")
    return weights[0]


def read_checkpoint(directory: Path) -> MarianCheckpoint:
    """Validates `directory` and reads its config; raises ImportRefused naming the first problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ImportRefused(f"{directory} is not a directory")
    raw = _read_json(directory / "config.json")
    check_config(raw)
    tok_cfg_path = directory / "tokenizer_config.json"
    tokenizer_config = _read_json(tok_cfg_path) if tok_cfg_path.exists() else {}
    weights = _check_files(directory, tokenizer_config)
    from transformers import MarianConfig

    config = MarianConfig.from_pretrained(str(directory), local_files_only=True)
    if config.pad_token_id is None:
        raise ImportRefused("config.json: pad_token_id is missing; Marian starts decoding with the pad id")
    return MarianCheckpoint(
        directory=directory,
        config=config,
        generation=_generation(directory, config),
        weights_file=weights,
        separate_vocabs=bool(tokenizer_config.get("separate_vocabs", False)),
    )


def load_model(checkpoint: MarianCheckpoint) -> Any:
    """The MarianMTModel in eval mode, from local files only (a .bin is loaded weights-only)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import MarianMTModel

    try:
        model = MarianMTModel.from_pretrained(
            str(checkpoint.directory), local_files_only=True, use_safetensors=checkpoint.weights_file.endswith(".safetensors"),
            attn_implementation="eager",
        )
    except Exception as e:  # transformers' own load errors: truncated or mismatched weights
        raise ImportRefused(f"could not load the weights in {checkpoint.directory / checkpoint.weights_file}: {e}") from None
    return model.eval()
