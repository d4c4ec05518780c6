"""A scripted token runtime for unit tests of the decoding loop and the scheduler."""

from __future__ import annotations

import time

import numpy as np

from seqcast.bundle.manifest import DecoderSpec, EncoderSpec, StateSpec, StaticSpec, TensorSpec

VOCAB, BOS, EOS = 50, 1, 2


class CountingRuntime:
    """Row r (its source's first token) emits scripts[r] token by token, then end-of-sequence.

    The cache holds every token a row was fed; the step checks that the unmasked part of each
    row's cache is exactly what that row was fed, and that its position counts them.
    """

    def __init__(self, scripts: dict[int, list[int]], step_delay: float = 0.0, check_feeds: bool = True) -> None:
        self.scripts = scripts
        self.step_delay = step_delay
        # Beam search feeds rows other tokens than the script's: it can't be checked token by token.
        self.check_feeds = check_feeds
        self.encoder_spec = EncoderSpec(
            inputs=[TensorSpec(name="input_ids", dtype="int64", shape=["batch", "source_length"]),
                    TensorSpec(name="encoder_attention_mask", dtype="int64", shape=["batch", "source_length"])],
            outputs=[TensorSpec(name="row_id", dtype="float32", shape=["batch", 1])],
        )
        self.decoder_spec = DecoderSpec(
            position_ids="position_ids",
            attention_mask="decoder_attention_mask",
            state=[StateSpec(input="past", output="present", init="empty", seq_axis=1)],
            static=[StaticSpec(input="row_id", source="row_id")],
            inputs=[TensorSpec(name="past", dtype="float32", shape=["batch", "past_length"])],
            outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 1, VOCAB])],
        )
        self.steps: list[tuple[int, int]] = []  # (rows, cache length) of every step

    def encode(self, source: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        return {"row_id": source[:, :1].astype(np.float32)}

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.step_delay)
        past, mask = feeds["past"], feeds["decoder_attention_mask"]
        self.steps.append((len(past), past.shape[1]))
        logits = np.zeros((len(past), 1, VOCAB), dtype=np.float32)
        for i, row in enumerate(feeds["row_id"][:, 0].astype(int)):
            fed = [int(t) for t in past[i][mask[i, :-1] == 1]] + [int(feeds["input_ids"][i, 0])]
            script = self.scripts[row]
            # Past its script a row is fed what it chose with end-of-sequence held back.
            if self.check_feeds:
                assert fed[: len(script) + 1] == ([BOS] + script)[: len(fed)], (row, fed)
            assert feeds["position_ids"][i, 0] == len(fed) - 1
            logits[i, 0, script[len(fed) - 1] if len(fed) - 1 < len(script) else EOS] = 1.0
        present = np.concatenate([past, feeds["input_ids"].astype(np.float32)], axis=1)
        return {"logits": logits, "present": present}
