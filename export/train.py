"""Training a translation model: token-bucketed batches, label smoothing, warm-up, checkpoints.

A run lives in one directory: `tokenizer.json` (trained on the training split at the start),
`config.json`, `last.pt` (written every `checkpoint_every` steps, for `--resume`), `best.pt`
(lowest dev loss) and `metrics.json` (chrF and BLEU on the test split, written at the end).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import sacrebleu
import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from seqcast.export.config import TrainConfig
from seqcast.export.corpus import EncodedPair, Pair, encode_pairs, encode_sources, read_split, token_batches
from seqcast.export.graphs import TorchRuntime, graphs_for
from seqcast.export.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_tokenizer
from seqcast.server.decoding import greedy_tokens
from seqcast.server.manifest import SpecialTokens

log = logging.getLogger(__name__)

SPECIAL = SpecialTokens(pad=PAD_ID, bos=BOS_ID, eos=EOS_ID)
# Settings a resumed run may change.
_RESUMABLE = {"steps", "eval_every", "checkpoint_every", "test_limit", "threads"}


@dataclass
class TrainState:
    step: int = 0
    best_dev_loss: float = math.inf
    history: list[dict] = field(default_factory=list)


def warmup_inverse_sqrt(step: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up to 1 over `warmup` steps, then 1/sqrt decay."""
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model(run_dir: Path, checkpoint: str = "best.pt") -> tuple[nn.Module, TrainConfig, Tokenizer]:
    """The trained model of a run directory, in eval mode, with its config and tokenizer."""
    cfg = TrainConfig(**json.loads((run_dir / "config.json").read_text()))
    model = cfg.build_model()
    state = torch.load(run_dir / checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, Tokenizer.from_file(str(run_dir / "tokenizer.json"))


@torch.no_grad()
def dev_loss(model: nn.Module, data: list[EncodedPair], batch_tokens: int) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for batch in token_batches(data, batch_tokens, random.Random(0)):
        logits = model(batch.src, batch.src_mask, batch.tgt_in)
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch.tgt_out.reshape(-1), ignore_index=PAD_ID, reduction="sum"
        )
        total += float(loss)
        tokens += batch.target_tokens
    model.train()
    return total / max(tokens, 1)


def score(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    return {
        "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2),
        "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
    }


def evaluate_torch(model: nn.Module, tokenizer: Tokenizer, pairs: list[Pair], max_tokens: int) -> dict[str, float]:
    """chrF and BLEU of greedy PyTorch decoding on `pairs` (over-long sources are truncated)."""
    runtime = TorchRuntime(graphs_for(model))
    sources = encode_sources(tokenizer, [p.en for p in pairs], max_tokens)
    outputs = greedy_tokens(runtime, SPECIAL, sources, max_tokens, batch_size=64)
    hyps = tokenizer.decode_batch(outputs)
    return score(hyps, [p.de for p in pairs])


def _save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, rng: random.Random) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": asdict(state),
            "rng": rng.getstate(),
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    tmp.replace(path)


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False) -> dict:
    """Trains (or resumes) a run; returns the final metrics, also written to metrics.json."""
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus = Path(cfg.corpus)
    last = run_dir / "last.pt"
    if resume and last.exists():
        saved = TrainConfig(**json.loads((run_dir / "config.json").read_text()))
        # Only the length of the run may change on resume (to extend it); anything else would
        # mix two experiments in one run directory.
        changed = sorted(k for k, v in asdict(cfg).items() if k not in _RESUMABLE and asdict(saved)[k] != v)
        if changed:
            raise ValueError(f"--resume with settings that differ from {run_dir / 'config.json'}: {', '.join(changed)}")
    elif last.exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another directory")
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    seed_everything(cfg.seed)

    train_pairs = read_split(corpus, "train", cfg.train_limit)
    dev_pairs = read_split(corpus, "dev")
    tok_file = run_dir / "tokenizer.json"
    if tok_file.exists():
        tokenizer = Tokenizer.from_file(str(tok_file))
    else:
        log.info("training a %d-token BPE tokenizer on %d pairs", cfg.vocab_size, len(train_pairs))
        tokenizer = train_tokenizer((t for p in train_pairs for t in (p.en, p.de)), cfg.vocab_size, tok_file)
    train_data = encode_pairs(train_pairs, tokenizer, cfg.max_tokens)
    dev_data = encode_pairs(dev_pairs, tokenizer, cfg.max_tokens)
    log.info("training on %d pairs, dev %d pairs", len(train_data), len(dev_data))

    model = cfg.build_model()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    state, rng = TrainState(), random.Random(cfg.seed)
    if resume and last.exists():
        saved = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["state"])
        rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        log.info("resumed at step %d (best dev loss %.4f)", state.step, state.best_dev_loss)

    criterion = nn.CrossEntropyLoss(ignore_index=PAD_ID, label_smoothing=cfg.label_smoothing)
    model.train()
    progress = tqdm(total=cfg.steps, initial=state.step, desc=f"train {cfg.architecture} ({n_params / 1e6:.1f}M params)", unit="step")
    started, tokens_seen = time.perf_counter(), 0
    while state.step < cfg.steps:
        for batch in token_batches(train_data, cfg.batch_tokens, rng):
            if state.step >= cfg.steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * warmup_inverse_sqrt(state.step + 1, cfg.warmup_steps)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(batch.src, batch.src_mask, batch.tgt_in)
            loss = criterion(logits.float().reshape(-1, logits.shape[-1]), batch.tgt_out.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            state.step += 1
            tokens_seen += batch.target_tokens
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_seen / (time.perf_counter() - started):.0f}")
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                dl = dev_loss(model, dev_data, cfg.batch_tokens)
                state.history.append({"step": state.step, "train_loss": round(loss.item(), 4), "dev_loss": round(dl, 4)})
                progress.write(f"step {state.step}: train loss {loss.item():.3f}, dev loss {dl:.3f}")
                if dl < state.best_dev_loss:
                    state.best_dev_loss = dl
                    _save(run_dir / "best.pt", model, optimizer, state, rng)
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
                _save(last, model, optimizer, state, rng)
    progress.close()

    model, _, _ = load_model(run_dir)
    test_pairs = read_split(corpus, "test", cfg.test_limit)
    metrics = {
        "steps": state.step,
        "best_dev_loss": round(state.best_dev_loss, 4),
        "parameters": n_params,
        "train_pairs": len(train_data),
        "test_pairs": len(test_pairs),
        "test": evaluate_torch(model, tokenizer, test_pairs, cfg.max_tokens),
        "history": state.history,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("test split: chrF %.2f, BLEU %.2f", metrics["test"]["chrf"], metrics["test"]["bleu"])
    return metrics
