"""Export wrappers: the exact functions that become encoder.onnx and decoder.onnx.

Each model kind gets an encoder wrapper and a decoder-step wrapper taking and returning flat
tensors in manifest order, plus the manifest's description of those tensors (names, dtypes,
symbolic axes, which decoder inputs are state and which are static). `TorchRuntime` runs the
wrappers behind the same `encode`/`step` interface as the server's ONNX Runtime model, so the
server's decoding loop drives PyTorch too, and parity checks compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from seqcast.bundle.manifest import DecoderSpec, EncoderSpec, StateSpec, StaticSpec, TensorSpec
from seqcast.export.forecast.forecasters import ArForecaster, LstmForecaster, MlpForecaster, ThetaBlend, TransformerForecaster
from seqcast.export.transformer import Transformer
from seqcast.export.translation.gru import GruAttention

I64, F32 = "int64", "float32"


@dataclass(frozen=True)
class GraphPair:
    """Wrappers plus the manifest entries that describe them."""

    encoder: nn.Module
    decoder: nn.Module
    encoder_spec: EncoderSpec
    decoder_spec: DecoderSpec


# --- transformer -------------------------------------------------------------------------------


class TransformerEncoderGraph(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, encoder_attention_mask: Tensor) -> tuple[Tensor, ...]:
        states, cross = self.model.encode(input_ids, encoder_attention_mask)
        return (states, *(t for kv in cross for t in kv))


def default_alignment_layer(layers: int) -> int:
    """The decoder layer whose cross-attention is exported as alignments: the penultimate one,
    whose attention follows word alignments best (Garg et al., 2019); 0 with one layer."""
    return max(layers - 2, 0)


class TransformerDecoderGraph(nn.Module):
    """Inputs: input_ids, position_ids, decoder_attention_mask, encoder_attention_mask, then
    per layer past decoder key/value, then per layer encoder key/value. Outputs: logits, per layer
    present key/value, then alignments (B, T, S): layer `alignment_layer`'s cross-attention
    averaged over heads."""

    def __init__(self, model: Transformer, alignment_layer: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.layers = len(model.decoder_layers)
        self.alignment_layer = default_alignment_layer(self.layers) if alignment_layer is None else alignment_layer

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        decoder_attention_mask: Tensor,
        encoder_attention_mask: Tensor,
        *kv: Tensor,
    ) -> tuple[Tensor, ...]:
        past, cross = split_kv(kv, self.layers)
        logits, present, alignments = self.model.decode(
            input_ids, position_ids, decoder_attention_mask, encoder_attention_mask, past, cross, self.alignment_layer
        )
        return (logits, *(t for pair in present for t in pair), alignments)


ALIGNMENTS = TensorSpec(name="alignments", dtype=F32, shape=["batch", "new_tokens", "source_length"])


def split_kv(kv: tuple[Tensor, ...], layers: int) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
    """A decoder step's flat cache inputs (every layer's self-attention key and value, then every
    layer's cross-attention key and value) as (key, value) pairs per layer: (past, cross)."""
    past = [(kv[2 * i], kv[2 * i + 1]) for i in range(layers)]
    cross = [(kv[2 * layers + 2 * i], kv[2 * layers + 2 * i + 1]) for i in range(layers)]
    return past, cross


def kv_specs(
    layers: int,
    heads: int,
    head_dim: int,
    d_model: int,
    source: TensorSpec,
    step_input: TensorSpec,
    step_output: TensorSpec,
    alignments: bool = False,
) -> tuple[EncoderSpec, DecoderSpec]:
    """Encoder and decoder specs of the KV-cache contract, shared by every transformer; with
    `alignments`, the decoder's last output is `alignments` (B, T, S)."""
    h, dh, n = heads, head_dim, layers
    cross_out = [f"present.{i}.encoder.{kv}" for i in range(n) for kv in ("key", "value")]
    past_in = [f"past_key_values.{i}.decoder.{kv}" for i in range(n) for kv in ("key", "value")]
    cross_in = [f"past_key_values.{i}.encoder.{kv}" for i in range(n) for kv in ("key", "value")]
    present_out = [f"present.{i}.decoder.{kv}" for i in range(n) for kv in ("key", "value")]
    encoder_spec = EncoderSpec(
        source=source.name,
        inputs=[source, TensorSpec(name="encoder_attention_mask", dtype=I64, shape=["batch", "source_length"])],
        outputs=[TensorSpec(name="encoder_hidden_states", dtype=F32, shape=["batch", "source_length", d_model])]
        + [TensorSpec(name=name, dtype=F32, shape=["batch", "source_length", d_model]) for name in cross_out],
    )
    decoder_spec = DecoderSpec(
        feed=step_input.name,
        output=step_output.name,
        position_ids="position_ids",
        attention_mask="decoder_attention_mask",
        state=[StateSpec(input=i, output=o, init="empty", seq_axis=2) for i, o in zip(past_in, present_out)],
        static=[StaticSpec(input="encoder_attention_mask", source="encoder_attention_mask", seq_axis=1)]
        + [StaticSpec(input=i, source=o, seq_axis=1) for i, o in zip(cross_in, cross_out)],
        inputs=[
            step_input,
            TensorSpec(name="position_ids", dtype=I64, shape=["batch", "new_tokens"]),
            TensorSpec(name="decoder_attention_mask", dtype=I64, shape=["batch", "past_and_new"]),
            TensorSpec(name="encoder_attention_mask", dtype=I64, shape=["batch", "source_length"]),
        ]
        + [TensorSpec(name=name, dtype=F32, shape=["batch", h, "past_length", dh]) for name in past_in]
        + [TensorSpec(name=name, dtype=F32, shape=["batch", "source_length", d_model]) for name in cross_in],
        outputs=[step_output]
        + [TensorSpec(name=name, dtype=F32, shape=["batch", h, "past_and_new", dh]) for name in present_out]
        + ([ALIGNMENTS] if alignments else []),
        alignments=ALIGNMENTS.name if alignments else None,
    )
    return encoder_spec, decoder_spec


def transformer_graphs(model: Transformer) -> GraphPair:
    cfg = model.cfg
    encoder_spec, decoder_spec = kv_specs(
        cfg.decoder_layers, cfg.n_heads, cfg.head_dim, cfg.d_model,
        source=TensorSpec(name="input_ids", dtype=I64, shape=["batch", "source_length"]),
        step_input=TensorSpec(name="input_ids", dtype=I64, shape=["batch", "new_tokens"]),
        step_output=TensorSpec(name="logits", dtype=F32, shape=["batch", "new_tokens", cfg.vocab_size]),
        alignments=True,
    )
    return GraphPair(TransformerEncoderGraph(model), TransformerDecoderGraph(model), encoder_spec, decoder_spec)


# --- GRU with additive attention ----------------------------------------------------------------


class GruEncoderGraph(nn.Module):
    def __init__(self, model: GruAttention) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, encoder_attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.encode(input_ids, encoder_attention_mask)


class GruDecoderGraph(nn.Module):
    def __init__(self, model: GruAttention) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: Tensor, encoder_attention_mask: Tensor, states: Tensor, keys: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.model.step(input_ids, state, states, keys, encoder_attention_mask)


def gru_graphs(model: GruAttention) -> GraphPair:
    cfg = model.cfg
    encoder_spec = EncoderSpec(
        inputs=[
            TensorSpec(name="input_ids", dtype=I64, shape=["batch", "source_length"]),
            TensorSpec(name="encoder_attention_mask", dtype=I64, shape=["batch", "source_length"]),
        ],
        outputs=[
            TensorSpec(name="encoder_hidden_states", dtype=F32, shape=["batch", "source_length", 2 * cfg.hidden]),
            TensorSpec(name="encoder_attention_keys", dtype=F32, shape=["batch", "source_length", cfg.attention_dim]),
            TensorSpec(name="initial_state.h", dtype=F32, shape=["batch", cfg.hidden]),
        ],
    )
    decoder_spec = DecoderSpec(
        state=[StateSpec(input="past_state.h", output="present_state.h", init="encoder", source="initial_state.h")],
        static=[
            StaticSpec(input="encoder_attention_mask", source="encoder_attention_mask", seq_axis=1),
            StaticSpec(input="encoder_hidden_states", source="encoder_hidden_states", seq_axis=1),
            StaticSpec(input="encoder_attention_keys", source="encoder_attention_keys", seq_axis=1),
        ],
        inputs=[
            TensorSpec(name="input_ids", dtype=I64, shape=["batch", 1]),
            TensorSpec(name="encoder_attention_mask", dtype=I64, shape=["batch", "source_length"]),
            TensorSpec(name="encoder_hidden_states", dtype=F32, shape=["batch", "source_length", 2 * cfg.hidden]),
            TensorSpec(name="encoder_attention_keys", dtype=F32, shape=["batch", "source_length", cfg.attention_dim]),
            TensorSpec(name="past_state.h", dtype=F32, shape=["batch", cfg.hidden]),
        ],
        outputs=[
            TensorSpec(name="logits", dtype=F32, shape=["batch", 1, cfg.vocab_size]),
            TensorSpec(name="present_state.h", dtype=F32, shape=["batch", cfg.hidden]),
        ],
    )
    return GraphPair(GruEncoderGraph(model), GruDecoderGraph(model), encoder_spec, decoder_spec)


# --- forecasters ---------------------------------------------------------------------------------


class LstmEncoderGraph(nn.Module):
    def __init__(self, model: LstmForecaster | ThetaBlend) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: Tensor, encoder_attention_mask: Tensor) -> tuple[Tensor, ...]:
        return self.model.encode(input_values, encoder_attention_mask)


class LstmDecoderGraph(nn.Module):
    def __init__(self, model: LstmForecaster) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_values: Tensor, encoder_attention_mask: Tensor, states: Tensor, keys: Tensor, h: Tensor, c: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.step(input_values, encoder_attention_mask, states, keys, h, c)


class ThetaBlendDecoderGraph(nn.Module):
    def __init__(self, model: ThetaBlend) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_values: Tensor, encoder_attention_mask: Tensor, states: Tensor, keys: Tensor, h: Tensor, c: Tensor,
        past_theta: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.model.step(input_values, encoder_attention_mask, states, keys, h, c, past_theta)


class ArEncoderGraph(nn.Module):
    def __init__(self, model: ArForecaster) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: Tensor, encoder_attention_mask: Tensor) -> tuple[Tensor]:
        return (self.model.encode(input_values, encoder_attention_mask),)


class ArDecoderGraph(nn.Module):
    def __init__(self, model: ArForecaster) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: Tensor, past_values: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.step(input_values, past_values)


class MlpEncoderGraph(nn.Module):
    def __init__(self, model: MlpForecaster) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: Tensor, encoder_attention_mask: Tensor) -> tuple[Tensor]:
        return (self.model.encode(input_values, encoder_attention_mask),)


class MlpDecoderGraph(nn.Module):
    def __init__(self, model: MlpForecaster) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: Tensor, past_quantiles: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.step(input_values, past_quantiles)


_VALUES = TensorSpec(name="input_values", dtype=F32, shape=["batch", "source_length"])
_SOURCE_MASK = TensorSpec(name="encoder_attention_mask", dtype=I64, shape=["batch", "source_length"])


class ForecastTransformerEncoderGraph(nn.Module):
    def __init__(self, model: TransformerForecaster) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: Tensor, encoder_attention_mask: Tensor) -> tuple[Tensor, ...]:
        states, last_season, cross = self.model.encode(input_values, encoder_attention_mask)
        return (states, last_season, *(t for kv in cross for t in kv))


class ForecastTransformerDecoderGraph(nn.Module):
    """Inputs: input_values, position_ids, decoder_attention_mask, encoder_attention_mask,
    last_season, then per layer past decoder key/value, then per layer encoder key/value."""

    def __init__(self, model: TransformerForecaster) -> None:
        super().__init__()
        self.model = model
        self.layers = len(model.decoder_layers)

    def forward(
        self,
        input_values: Tensor,
        position_ids: Tensor,
        decoder_attention_mask: Tensor,
        encoder_attention_mask: Tensor,
        last_season: Tensor,
        *kv: Tensor,
    ) -> tuple[Tensor, ...]:
        past, cross = split_kv(kv, self.layers)
        quantiles, present = self.model.decode(
            input_values, position_ids, decoder_attention_mask, encoder_attention_mask, last_season, past, cross
        )
        return (quantiles, *(t for pair in present for t in pair))


def forecast_transformer_graphs(model: TransformerForecaster) -> GraphPair:
    cfg = model.cfg
    encoder_spec, decoder_spec = kv_specs(
        cfg.layers, cfg.n_heads, model.head_dim, cfg.d_model,
        source=_VALUES,
        step_input=TensorSpec(name="input_values", dtype=F32, shape=["batch", "new_tokens"]),
        step_output=TensorSpec(name="quantiles", dtype=F32, shape=["batch", "new_tokens", len(cfg.quantile_levels)]),
    )
    # The last season of the context: the seasonal-naive base of every step's forecast.
    season = TensorSpec(name="last_season", dtype=F32, shape=["batch", model.season_length])
    outputs = encoder_spec.outputs
    encoder_spec = encoder_spec.model_copy(update={"outputs": [outputs[0], season, *outputs[1:]]})
    inputs = decoder_spec.inputs
    decoder_spec = decoder_spec.model_copy(update={
        "inputs": [*inputs[:4], season, *inputs[4:]],
        "static": [*decoder_spec.static, StaticSpec(input="last_season", source="last_season")],
    })
    return GraphPair(ForecastTransformerEncoderGraph(model), ForecastTransformerDecoderGraph(model), encoder_spec, decoder_spec)


def lstm_graphs(model: LstmForecaster) -> GraphPair:
    d, q = model.cfg.d_model, len(model.cfg.quantile_levels)
    encoder_spec = EncoderSpec(
        source="input_values",
        inputs=[_VALUES, _SOURCE_MASK],
        outputs=[
            TensorSpec(name="encoder_hidden_states", dtype=F32, shape=["batch", "source_length", d]),
            TensorSpec(name="encoder_attention_keys", dtype=F32, shape=["batch", "source_length", d]),
            TensorSpec(name="initial_state.h", dtype=F32, shape=["batch", d]),
            TensorSpec(name="initial_state.c", dtype=F32, shape=["batch", d]),
        ],
    )
    decoder_spec = DecoderSpec(
        feed="input_values",
        output="quantiles",
        state=[
            StateSpec(input="past_state.h", output="present_state.h", init="encoder", source="initial_state.h"),
            StateSpec(input="past_state.c", output="present_state.c", init="encoder", source="initial_state.c"),
        ],
        static=[
            StaticSpec(input="encoder_attention_mask", source="encoder_attention_mask", seq_axis=1),
            StaticSpec(input="encoder_hidden_states", source="encoder_hidden_states", seq_axis=1),
            StaticSpec(input="encoder_attention_keys", source="encoder_attention_keys", seq_axis=1),
        ],
        inputs=[
            TensorSpec(name="input_values", dtype=F32, shape=["batch", 1]),
            _SOURCE_MASK,
            TensorSpec(name="encoder_hidden_states", dtype=F32, shape=["batch", "source_length", d]),
            TensorSpec(name="encoder_attention_keys", dtype=F32, shape=["batch", "source_length", d]),
            TensorSpec(name="past_state.h", dtype=F32, shape=["batch", d]),
            TensorSpec(name="past_state.c", dtype=F32, shape=["batch", d]),
        ],
        outputs=[
            TensorSpec(name="quantiles", dtype=F32, shape=["batch", 1, q]),
            TensorSpec(name="present_state.h", dtype=F32, shape=["batch", d]),
            TensorSpec(name="present_state.c", dtype=F32, shape=["batch", d]),
        ],
    )
    return GraphPair(LstmEncoderGraph(model), LstmDecoderGraph(model), encoder_spec, decoder_spec)


def theta_blend_graphs(model: ThetaBlend) -> GraphPair:
    """The LSTM's graphs over the last N = `neural_context` values (a fixed width: shorter
    contexts are masked), plus Theta's forecasts: an encoder output that seeds one more state."""
    d, q, n, h = model.cfg.d_model, len(model.cfg.quantile_levels), model.neural_context, model.horizon
    mask = TensorSpec(name="encoder_attention_mask", dtype=I64, shape=["batch", n])
    states = TensorSpec(name="encoder_hidden_states", dtype=F32, shape=["batch", n, d])
    keys = TensorSpec(name="encoder_attention_keys", dtype=F32, shape=["batch", n, d])
    lstm_state = [TensorSpec(name=f"{kind}_state.{x}", dtype=F32, shape=["batch", d]) for kind in ("past", "present") for x in "hc"]
    encoder_spec = EncoderSpec(
        source="input_values",
        inputs=[_VALUES, _SOURCE_MASK],
        outputs=[
            TensorSpec(name="neural_attention_mask", dtype=I64, shape=["batch", n]),
            states,
            keys,
            TensorSpec(name="initial_state.h", dtype=F32, shape=["batch", d]),
            TensorSpec(name="initial_state.c", dtype=F32, shape=["batch", d]),
            TensorSpec(name="initial_theta", dtype=F32, shape=["batch", h]),
        ],
    )
    decoder_spec = DecoderSpec(
        feed="input_values",
        output="quantiles",
        state=[
            StateSpec(input="past_state.h", output="present_state.h", init="encoder", source="initial_state.h"),
            StateSpec(input="past_state.c", output="present_state.c", init="encoder", source="initial_state.c"),
            StateSpec(input="past_theta", output="present_theta", init="encoder", source="initial_theta"),
        ],
        static=[
            StaticSpec(input="encoder_attention_mask", source="neural_attention_mask", seq_axis=1),
            StaticSpec(input="encoder_hidden_states", source="encoder_hidden_states", seq_axis=1),
            StaticSpec(input="encoder_attention_keys", source="encoder_attention_keys", seq_axis=1),
        ],
        inputs=[
            TensorSpec(name="input_values", dtype=F32, shape=["batch", 1]),
            mask, states, keys, *lstm_state[:2],
            TensorSpec(name="past_theta", dtype=F32, shape=["batch", h]),
        ],
        outputs=[
            TensorSpec(name="quantiles", dtype=F32, shape=["batch", 1, q]),
            *lstm_state[2:],
            TensorSpec(name="present_theta", dtype=F32, shape=["batch", h]),
        ],
    )
    return GraphPair(LstmEncoderGraph(model), ThetaBlendDecoderGraph(model), encoder_spec, decoder_spec)


def ar_graphs(model: ArForecaster) -> GraphPair:
    lags = model.order - 1
    encoder_spec = EncoderSpec(
        source="input_values",
        inputs=[_VALUES, _SOURCE_MASK],
        outputs=[TensorSpec(name="initial_values", dtype=F32, shape=["batch", lags])],
    )
    decoder_spec = DecoderSpec(
        feed="input_values",
        output="mean",
        state=[StateSpec(input="past_values", output="present_values", init="encoder", source="initial_values")],
        static=[],
        inputs=[
            TensorSpec(name="input_values", dtype=F32, shape=["batch", 1]),
            TensorSpec(name="past_values", dtype=F32, shape=["batch", lags]),
        ],
        outputs=[
            TensorSpec(name="mean", dtype=F32, shape=["batch", 1, 1]),
            TensorSpec(name="present_values", dtype=F32, shape=["batch", lags]),
        ],
    )
    return GraphPair(ArEncoderGraph(model), ArDecoderGraph(model), encoder_spec, decoder_spec)


def mlp_graphs(model: MlpForecaster) -> GraphPair:
    pending = [model.horizon, len(model.cfg.quantile_levels)]
    encoder_spec = EncoderSpec(
        source="input_values",
        inputs=[_VALUES, _SOURCE_MASK],
        outputs=[TensorSpec(name="initial_quantiles", dtype=F32, shape=["batch", *pending])],
    )
    decoder_spec = DecoderSpec(
        feed="input_values",
        output="quantiles",
        # Every step is forecast by the encoder; the state is the steps not yet emitted.
        state=[StateSpec(input="past_quantiles", output="present_quantiles", init="encoder", source="initial_quantiles")],
        static=[],
        inputs=[
            TensorSpec(name="input_values", dtype=F32, shape=["batch", 1]),
            TensorSpec(name="past_quantiles", dtype=F32, shape=["batch", *pending]),
        ],
        outputs=[
            TensorSpec(name="quantiles", dtype=F32, shape=["batch", 1, pending[1]]),
            TensorSpec(name="present_quantiles", dtype=F32, shape=["batch", *pending]),
        ],
    )
    return GraphPair(MlpEncoderGraph(model), MlpDecoderGraph(model), encoder_spec, decoder_spec)


def graphs_for(model: nn.Module) -> GraphPair:
    if isinstance(model, Transformer):
        return transformer_graphs(model)
    if isinstance(model, GruAttention):
        return gru_graphs(model)
    if isinstance(model, TransformerForecaster):
        return forecast_transformer_graphs(model)
    if isinstance(model, LstmForecaster):
        return lstm_graphs(model)
    if isinstance(model, ThetaBlend):
        return theta_blend_graphs(model)
    if isinstance(model, ArForecaster):
        return ar_graphs(model)
    if isinstance(model, MlpForecaster):
        return mlp_graphs(model)
    raise TypeError(f"no export graphs for {type(model).__name__}")


# --- inputs for tracing and parity checks ---------------------------------------------------------


def sample_inputs(
    specs: list[TensorSpec], sizes: dict[str, int], vocab_size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Valid inputs for `specs` with every symbolic axis at `sizes[axis name]`.

    Sources are right-padded (row 0 full, the others shorter); the cache mask has holes in the
    past for rows after the first, as rows that joined a running batch leave them; positions
    continue after the past.
    """
    batch, source, past = sizes["batch"], sizes["source_length"], sizes["past_length"]
    lengths = np.concatenate([[source], rng.integers(1, source + 1, batch - 1)])
    feeds = {}
    for spec in specs:
        shape = [d if isinstance(d, int) else sizes[d] for d in spec.shape]
        if spec.dtype == "float32":
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
        elif spec.name == "encoder_attention_mask":
            feeds[spec.name] = (np.arange(shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        elif spec.name == "decoder_attention_mask":
            mask = np.ones(shape, dtype=np.int64)
            mask[1:, : past // 2] = 0
            feeds[spec.name] = mask
        elif spec.name == "position_ids":
            feeds[spec.name] = np.repeat((past + np.arange(shape[1]))[None, :], shape[0], axis=0).astype(np.int64)
        else:  # token ids
            feeds[spec.name] = rng.integers(4, vocab_size, shape).astype(np.int64)
    return feeds


# --- PyTorch behind the runtime interface --------------------------------------------------------


class TorchRuntime:
    """Runs the export wrappers in PyTorch behind the server's `encode`/`step` interface."""

    def __init__(self, graphs: GraphPair) -> None:
        self.graphs = graphs
        self.encoder_spec = graphs.encoder_spec
        self.decoder_spec = graphs.decoder_spec

    @torch.inference_mode()
    def encode(self, source: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        out = self.graphs.encoder(torch.from_numpy(source), torch.from_numpy(attention_mask))
        return {t.name: o.numpy() for t, o in zip(self.graphs.encoder_spec.outputs, out)}

    @torch.inference_mode()
    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.graphs.decoder_spec.inputs]
        out = self.graphs.decoder(*args)
        return {t.name: o.numpy() for t, o in zip(self.graphs.decoder_spec.outputs, out)}
