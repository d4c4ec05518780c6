"""Calls a seqcast server's KServe v2 front end with Triton's own client (tritonclient.grpc) and
prints what came back as one JSON object; tests/test_kserve.py runs it and checks the answers.

It runs in its own process because tritonclient and seqcast's server cannot be imported in one:
both register the protobuf package `inference` (the protocol's name, which the wire format
fixes), and protobuf refuses a second definition of the same messages.

Usage: python tests/triton_calls.py HOST:PORT '{"texts": [...], "series": [[...], ...], "horizon": 4}'
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

TRANSLATION, FORECAST = "en-de", "tourism"


def text_input(texts: list[str], shape: list[int] | None = None, datatype: str = "BYTES") -> triton.InferInput:
    array = np.array([t.encode() for t in texts], dtype=object).reshape(shape or [len(texts)])
    tensor = triton.InferInput("text", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def series_inputs(series: list[list[float]]) -> list[triton.InferInput]:
    """series FP32 [N, T] right-padded with zeros, lengths INT64 [N]."""
    width = max(len(s) for s in series)
    padded = np.zeros((len(series), width), dtype=np.float32)
    for i, s in enumerate(series):
        padded[i, : len(s)] = s
    values = triton.InferInput("series", list(padded.shape), "FP32")
    values.set_data_from_numpy(padded)
    lengths = triton.InferInput("lengths", [len(series)], "INT64")
    lengths.set_data_from_numpy(np.array([len(s) for s in series], dtype=np.int64))
    return [values, lengths]


def translation(result: triton.InferResult) -> dict[str, Any]:
    return {
        "translation": [b.decode() for b in result.as_numpy("translation").reshape(-1)],
        "shape": list(result.as_numpy("translation").shape),
        "finish_reason": [b.decode() for b in result.as_numpy("finish_reason").reshape(-1)],
        "input_tokens": result.as_numpy("input_tokens").reshape(-1).tolist(),
        "output_tokens": result.as_numpy("output_tokens").reshape(-1).tolist(),
    }


def failure(call: Any) -> dict[str, str]:
    """The status and message of a call that must fail."""
    try:
        call()
    except InferenceServerException as e:
        return {"status": str(e.status()), "message": e.message()}
    return {"status": "OK", "message": ""}


def tensor(name: str, datatype: str, array: np.ndarray) -> triton.InferInput:
    t = triton.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def stream(client: triton.InferenceServerClient, texts: list[str]) -> dict[str, Any]:
    """Streams one translation request and one bad request on one stream."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer(TRANSLATION, [text_input(texts)], request_id="s1", parameters={"max_new_tokens": 32},
                              enable_empty_final_response=True)
    pieces: list[list[str]] = []
    while True:
        result, error = answers.get(timeout=60)
        assert error is None, error
        final = result.get_response().parameters["triton_final_response"].bool_param
        if final:
            break
        pieces.append([b.decode() for b in result.as_numpy("translation").reshape(-1)])
    client.async_stream_infer(TRANSLATION, [text_input([""])], request_id="s2")
    _, error = answers.get(timeout=60)
    client.stop_stream()
    return {"pieces": pieces, "error": str(error)}


def main() -> None:
    target, spec = sys.argv[1], json.loads(sys.argv[2])
    texts, series, horizon = spec["texts"], spec["series"], spec["horizon"]
    client = triton.InferenceServerClient(target)
    out: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": {m: client.is_model_ready(m) for m in (TRANSLATION, FORECAST, "no-such-model")},
        "server_metadata": client.get_server_metadata(as_json=True),
        "metadata": {m: client.get_model_metadata(m, as_json=True) for m in (TRANSLATION, FORECAST)},
    }
    greedy = client.infer(TRANSLATION, [text_input(texts)], parameters={"max_new_tokens": 32}, request_id="r1")
    out["translate"] = {**translation(greedy), "id": greedy.get_response().id}
    column = client.infer(TRANSLATION, [text_input(texts, [len(texts), 1])], parameters={"max_new_tokens": 32})
    out["translate_column"] = translation(column)
    out["beam"] = translation(client.infer(TRANSLATION, [text_input(texts)], parameters={"max_new_tokens": 32, "beam_size": 2}))
    out["sampling"] = translation(client.infer(
        TRANSLATION, [text_input(texts)], parameters={"max_new_tokens": 32, "temperature": 0.8, "top_k": 5, "seed": 7}
    ))
    forecast = client.infer(FORECAST, series_inputs(series), parameters={"horizon": horizon})
    parameters = forecast.get_response().parameters
    out["forecast"] = {
        "point": forecast.as_numpy("point").tolist(),
        "quantiles": forecast.as_numpy("quantiles").tolist(),
        "context_used": forecast.as_numpy("context_used").tolist(),
        "levels": parameters["quantile_levels"].string_param,
        "point_kind": parameters["point"].string_param,
    }
    # The README's example: one series, no lengths.
    readme = tensor("series", "FP32", np.arange(1, 13, dtype=np.float32)[None, :])
    shown = client.infer(FORECAST, [readme], parameters={"horizon": 4})
    out["readme_forecast"] = [list(shown.as_numpy("point").shape), list(shown.as_numpy("quantiles").shape)]
    out["stream"] = stream(client, texts)
    bad = {
        "text_int32": lambda: client.infer(TRANSLATION, [tensor("text", "INT32", np.array([1, 2], dtype=np.int32))]),
        "text_3d": lambda: client.infer(TRANSLATION, [text_input(["a", "b"], [1, 2, 1])]),
        "text_missing": lambda: client.infer(TRANSLATION, []),
        "text_unknown_input": lambda: client.infer(TRANSLATION, [text_input(["a"]), tensor("texts", "INT64", np.zeros(1, np.int64))]),
        "series_fp64": lambda: client.infer(FORECAST, [tensor("series", "FP64", np.ones((1, 12)))], parameters={"horizon": 2}),
        "series_1d": lambda: client.infer(FORECAST, [tensor("series", "FP32", np.ones(12, np.float32))], parameters={"horizon": 2}),
        "series_missing": lambda: client.infer(FORECAST, [tensor("lengths", "INT64", np.array([3], np.int64))], parameters={"horizon": 2}),
        "lengths_shape": lambda: client.infer(FORECAST, [tensor("series", "FP32", np.ones((2, 12), np.float32)),
                                                         tensor("lengths", "INT64", np.array([12], np.int64))], parameters={"horizon": 2}),
        "horizon_missing": lambda: client.infer(FORECAST, series_inputs(series)),
        "unknown_parameter": lambda: client.infer(TRANSLATION, [text_input(["a"])], parameters={"max_tokens": 5}),
        "parameter_type": lambda: client.infer(TRANSLATION, [text_input(["a"])], parameters={"max_new_tokens": "5"}),
        "beam_and_sampling": lambda: client.infer(TRANSLATION, [text_input(["a"])], parameters={"beam_size": 2, "seed": 1}),
        "empty_text": lambda: client.infer(TRANSLATION, [text_input(["a", " "])]),
        "unknown_model": lambda: client.infer("no-such-model", [text_input(["a"])]),
        "unknown_version": lambda: client.infer(TRANSLATION, [text_input(["a"])], model_version="9"),
        "unknown_metadata": lambda: client.get_model_metadata("no-such-model"),
        "horizon_too_long": lambda: client.infer(FORECAST, series_inputs(series), parameters={"horizon": 1000}),
    }
    out["bad"] = {name: failure(call) for name, call in bad.items()}
    client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
