"""The KServe v2 front end, called by Triton's own client (tritonclient.grpc, in its own process:
see tests/triton_calls.py) against a real server on the committed en-de and tourism bundles:
health, metadata, unary and streaming inference, bad tensors; each answer equals what the
native API returns for the same request."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from seqcast.client import BeamSearch, Sampling, SeqcastClient

from conftest import ServerThread, committed_models, start_server

# Only looked up, never imported here: see tests/triton_calls.py.
if importlib.util.find_spec("tritonclient") is None:
    pytest.skip("tritonclient (the dev extra) is the client under test", allow_module_level=True)

TEXTS = ["Save changes", "Open the file in a new window.", "Delete"]
SERIES = [[float(10 + (i % 4) * 3 + i * 0.5) for i in range(20)], [float(100 - i) for i in range(12)]]
HORIZON = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    models = committed_models(tmp_path_factory.mktemp("kserve") / "models")
    srv = start_server(models, default_model="en-de", default_forecast_model="tourism", log_level="WARNING")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def triton(server: ServerThread) -> dict[str, Any]:
    """Everything tritonclient got back, from one run of tests/triton_calls.py."""
    spec = json.dumps({"texts": TEXTS, "series": SERIES, "horizon": HORIZON})
    script = Path(__file__).with_name("triton_calls.py")
    done = subprocess.run([sys.executable, str(script), server.target, spec], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def native(server: ServerThread) -> Iterator[SeqcastClient]:
    with SeqcastClient(server.target) as client:
        yield client


def test_health_and_server_metadata(triton: dict[str, Any]) -> None:
    assert triton["live"] and triton["ready"]
    assert triton["model_ready"] == {"en-de": True, "tourism": True, "no-such-model": False}
    assert triton["server_metadata"]["name"] == "seqcast"


def test_model_metadata_describes_the_tensors(triton: dict[str, Any]) -> None:
    def tensors(entries: list[dict[str, Any]]) -> dict[str, tuple[str, list[int]]]:
        return {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in entries}

    translation, forecast = triton["metadata"]["en-de"], triton["metadata"]["tourism"]
    assert translation["platform"] == "seqcast" and translation["versions"] == ["1"]
    assert tensors(translation["inputs"]) == {"text": ("BYTES", [-1])}
    assert tensors(translation["outputs"]) == {"translation": ("BYTES", [-1]), "finish_reason": ("BYTES", [-1]),
                                               "input_tokens": ("INT32", [-1]), "output_tokens": ("INT32", [-1])}
    assert tensors(forecast["inputs"]) == {"series": ("FP32", [-1, -1]), "lengths": ("INT64", [-1])}
    assert tensors(forecast["outputs"]) == {"point": ("FP32", [-1, -1]), "quantiles": ("FP32", [-1, 9, -1]),
                                            "context_used": ("INT32", [-1])}


def test_translation_of_several_texts_equals_the_native_api(triton: dict[str, Any], native: SeqcastClient) -> None:
    expected = native.translate(TEXTS, max_new_tokens=32)
    got = triton["translate"]
    assert got["translation"] == [r.text for r in expected]
    assert got["finish_reason"] == [r.finish_reason for r in expected]
    assert got["input_tokens"] == [r.input_tokens for r in expected]
    assert got["output_tokens"] == [r.output_tokens for r in expected]
    assert got["shape"] == [3] and got["id"] == "r1"
    assert all(got["translation"])
    # [N, 1] in, [N, 1] out, same texts.
    assert triton["translate_column"]["shape"] == [3, 1]
    assert triton["translate_column"]["translation"] == got["translation"]


def test_beam_search_and_sampling_parameters_decode_as_the_native_api(triton: dict[str, Any], native: SeqcastClient) -> None:
    beam = native.translate(TEXTS, max_new_tokens=32, decoding=BeamSearch(beam_size=2))
    assert triton["beam"]["translation"] == [r.text for r in beam]
    sampled = native.translate(TEXTS, max_new_tokens=32, decoding=Sampling(temperature=0.8, top_k=5, seed=7))
    assert triton["sampling"]["translation"] == [r.text for r in sampled]


def test_forecast_equals_the_native_api(triton: dict[str, Any], native: SeqcastClient) -> None:
    expected = native.forecast(SERIES, HORIZON, model="tourism")
    got = triton["forecast"]

    def fp32(values: object) -> list:
        return np.asarray(values, dtype=np.float32).tolist()

    # The native API answers doubles; the FP32 tensors hold the same values rounded to float32.
    assert got["point"] == fp32([f.point for f in expected.forecasts])
    levels = [float(q) for q in got["levels"].split(",")]
    assert levels == list(expected.forecasts[0].quantiles)
    assert got["quantiles"] == fp32([[f.quantiles[q] for q in levels] for f in expected.forecasts])
    assert got["context_used"] == [f.context_used for f in expected.forecasts]
    assert got["point_kind"] == expected.point == "median"
    # Without `lengths` every row is whole (the README's example).
    assert triton["readme_forecast"] == [[1, 4], [1, 9, 4]]


def test_stream_pieces_join_to_the_unary_result(triton: dict[str, Any]) -> None:
    pieces = triton["stream"]["pieces"]
    assert len(pieces) > 1, "the translation came back in one piece: nothing was streamed"
    joined = ["".join(p[i] for p in pieces) for i in range(len(TEXTS))]
    assert joined == triton["translate"]["translation"]
    # A bad request on the stream answers an error naming its status; the stream goes on.
    assert triton["stream"]["error"].startswith("[StatusCode.INVALID_ARGUMENT]") and "texts[0] is empty" in triton["stream"]["error"]


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("text_int32", "INVALID_ARGUMENT", "text must be BYTES, got INT32"),
        ("text_3d", "INVALID_ARGUMENT", "text must have shape [N] or [N, 1], got [1, 2, 1]"),
        ("text_missing", "INVALID_ARGUMENT", "input tensor text is missing"),
        ("text_unknown_input", "INVALID_ARGUMENT", "unknown input tensor 'texts'"),
        ("series_fp64", "INVALID_ARGUMENT", "series must be FP32, got FP64"),
        ("series_1d", "INVALID_ARGUMENT", "series must have shape [N, T], got [12]"),
        ("series_missing", "INVALID_ARGUMENT", "input tensor series is missing"),
        ("lengths_shape", "INVALID_ARGUMENT", "lengths must have shape [2]"),
        ("horizon_missing", "INVALID_ARGUMENT", "parameter horizon is missing"),
        ("unknown_parameter", "INVALID_ARGUMENT", "unknown parameter 'max_tokens'"),
        ("parameter_type", "INVALID_ARGUMENT", "max_new_tokens must be an integer"),
        ("beam_and_sampling", "INVALID_ARGUMENT", "exclude each other"),
        ("empty_text", "INVALID_ARGUMENT", "texts[1] is empty"),
        ("unknown_model", "NOT_FOUND", "model 'no-such-model' is not loaded"),
        ("unknown_version", "NOT_FOUND", "version '9' is not loaded"),
        ("unknown_metadata", "NOT_FOUND", "model 'no-such-model' is not loaded"),
        ("horizon_too_long", "INVALID_ARGUMENT", "horizon must be between 1 and 8"),
    ],
)
def test_bad_requests_get_the_native_status_codes_and_say_what_is_wrong(triton: dict[str, Any], case: str, status: str, words: str) -> None:
    got = triton["bad"][case]
    assert got["status"] == f"StatusCode.{status}", got
    assert words in got["message"], got


def test_calls_are_counted_under_their_method(triton: dict[str, Any]) -> None:
    def count(model: str, method: str, code: str) -> float:
        value = REGISTRY.get_sample_value("seqcast_request_duration_seconds_count", {"model": model, "method": method, "code": code})
        return value or 0.0

    assert count("en-de", "ModelInfer", "OK") >= 4
    assert count("tourism", "ModelInfer", "OK") >= 1
    assert count("en-de", "ModelStreamInfer", "OK") >= 1
    assert count("en-de", "ModelStreamInfer", "INVALID_ARGUMENT") >= 1
    assert count("unknown", "ModelInfer", "NOT_FOUND") >= 1
