"""Training a translation model: token-bucketed batches, label smoothing, warm-up, through the
shared training loop (`seqcast.export.fit`).

The corpus is a built corpus directory, a TSV file or two aligned plain-text files
(`seqcast.export.translation.corpus`). A run lives in one directory: `tokenizer.json` (trained on the
training split at the start), `config.json`, `last.pt`, `best.pt` (lowest dev loss) and
`metrics.json` (chrF and BLEU on the test split, written at the end).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
import torch
from tokenizers import Tokenizer
from torch import nn

from seqcast.bundle.decoding import greedy_tokens
from seqcast.bundle.manifest import SpecialTokens
from seqcast.export.config import TrainConfig, from_json
from seqcast.export.fit import BEST, CONFIG, FitSettings, fit, load_weights, start_run
from seqcast.export.graphs import TorchRuntime, graphs_for
from seqcast.export.translation.corpus import Batch, EncodedPair, Pair, encode_pairs, encode_sources, read_split, token_batches
from seqcast.export.translation.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_tokenizer

log = logging.getLogger(__name__)

SPECIAL = SpecialTokens(pad=PAD_ID, bos=BOS_ID, eos=EOS_ID)
# Settings a resumed run may change.
_RESUMABLE = frozenset({"steps", "eval_every", "checkpoint_every", "test_limit", "threads"})


def warmup_inverse_sqrt(step: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up to 1 over `warmup` steps, then 1/sqrt decay."""
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model(run_dir: Path, checkpoint: str = BEST) -> tuple[nn.Module, TrainConfig, Tokenizer]:
    """The trained model of a run directory, in eval mode, with its config and tokenizer."""
    cfg = from_json(TrainConfig, json.loads((run_dir / CONFIG).read_text()))
    model = load_weights(cfg.build_model(), run_dir / checkpoint)
    return model, cfg, Tokenizer.from_file(str(run_dir / "tokenizer.json"))


@torch.no_grad()
def dev_loss(model: nn.Module, data: list[EncodedPair], batch_tokens: int) -> float:
    """Mean cross-entropy per target token (no label smoothing); the caller sets eval mode."""
    total, tokens = 0.0, 0
    for batch in token_batches(data, batch_tokens, random.Random(0)):
        logits = model(batch.src, batch.src_mask, batch.tgt_in)
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch.tgt_out.reshape(-1), ignore_index=PAD_ID, reduction="sum"
        )
        total += float(loss)
        tokens += batch.target_tokens
    return total / max(tokens, 1)


def score(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    return {
        "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2),
        "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
    }


def evaluate_torch(model: nn.Module, tokenizer: Tokenizer, pairs: list[Pair], max_tokens: int) -> dict[str, float]:
    """chrF and BLEU of greedy PyTorch decoding on `pairs` (over-long sources are truncated)."""
    runtime = TorchRuntime(graphs_for(model))
    sources = encode_sources(tokenizer, [p.source for p in pairs], max_tokens)
    outputs = greedy_tokens(runtime, SPECIAL, sources, max_tokens, batch_size=64)
    hyps = tokenizer.decode_batch(outputs)
    return score(hyps, [p.target for p in pairs])


class TranslationTrainer:
    """The translation model's part of the training loop: label-smoothed cross-entropy on
    token-bucketed batches (bf16 autocast where the CPU has it), scored by dev loss."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, train_data: list[EncodedPair], dev_data: list[EncodedPair]) -> None:
        self.cfg, self.model, self.train_data, self.dev_data = cfg, model, train_data, dev_data
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.98),
        )
        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD_ID, label_smoothing=cfg.label_smoothing)
        self.rng = random.Random(cfg.seed)
        self.bf16 = cfg.uses_bf16()
        self._batches: Iterator[Batch] | None = None

    def _epochs(self) -> Iterator[Batch]:
        while True:
            yield from token_batches(self.train_data, self.cfg.batch_tokens, self.rng)

    def loss(self) -> torch.Tensor:
        if self._batches is None:  # made on first use, so that a resumed run's RNG state applies
            self._batches = self._epochs()
        batch = next(self._batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(batch.src, batch.src_mask, batch.tgt_in)
        return self.criterion(logits.float().reshape(-1, logits.shape[-1]), batch.tgt_out.reshape(-1))

    def validate(self) -> dict[str, float]:
        return {"dev_loss": dev_loss(self.model, self.dev_data, self.cfg.batch_tokens)}

    def rng_state(self) -> dict[str, Any]:
        return {"batches": self.rng.getstate()}

    def load_rng_state(self, state: Mapping[str, Any]) -> None:
        self.rng.setstate(state["batches"])


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False) -> dict:
    """Trains (or resumes) a run; returns the final metrics, also written to metrics.json."""
    torch.set_num_threads(cfg.threads)
    # The corpus first: a file that can't be read is refused before a run directory is made.
    train_pairs = read_split(cfg.corpus_paths(), "train", cfg.train_limit)
    dev_pairs = read_split(cfg.corpus_paths(), "dev")
    resuming = start_run(run_dir, asdict(cfg), resume, _RESUMABLE)
    seed_everything(cfg.seed)

    tok_file = run_dir / "tokenizer.json"
    if tok_file.exists() and resuming:
        tokenizer = Tokenizer.from_file(str(tok_file))
    else:
        log.info("training a %d-token BPE tokenizer on %d pairs", cfg.vocab_size, len(train_pairs))
        tokenizer = train_tokenizer((t for p in train_pairs for t in (p.source, p.target)), cfg.vocab_size, tok_file)
    train_data = encode_pairs(train_pairs, tokenizer, cfg.max_tokens)
    dev_data = encode_pairs(dev_pairs, tokenizer, cfg.max_tokens)
    if not train_data or not dev_data:
        raise ValueError(f"no training or dev pairs of at most {cfg.max_tokens} tokens in {', '.join(cfg.corpus)}")
    log.info("training on %d pairs, dev %d pairs", len(train_data), len(dev_data))

    model = cfg.build_model()
    n_params = sum(p.numel() for p in model.parameters())
    trainer = TranslationTrainer(cfg, model, train_data, dev_data)
    settings = FitSettings(
        steps=cfg.steps, lr=cfg.lr, lr_factor=lambda step: warmup_inverse_sqrt(step + 1, cfg.warmup_steps),
        clip_norm=cfg.clip_norm, eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
        score="dev_loss", description=f"train {cfg.architecture} ({n_params / 1e6:.1f}M params)",
    )
    state = fit(trainer, settings, run_dir, resuming)

    model, _, _ = load_model(run_dir)
    test_pairs = read_split(cfg.corpus_paths(), "test", cfg.test_limit)
    metrics = {
        "steps": state.step,
        "best_dev_loss": round(state.best, 4),
        "seconds": round(state.seconds, 1),
        "parameters": n_params,
        "train_pairs": len(train_data),
        "test_pairs": len(test_pairs),
        "test": evaluate_torch(model, tokenizer, test_pairs, cfg.max_tokens),
        "history": state.history,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("test split: chrF %.2f, BLEU %.2f", metrics["test"]["chrf"], metrics["test"]["bleu"])
    return metrics
