"""Hostile requests against a real server (the committed en-de and tourism bundles): bytes that do
not parse, inputs echoed into error messages, and a structured fuzz run through every method.

Every reply must be a documented status with a readable message, never UNKNOWN or INTERNAL, the
log must not grow by a traceback per bad call, and the server must serve normally afterwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqcast.inference import grpc_service_pb2 as inference_pb
from seqcast.server.errors import MAX_MESSAGE_CHARS
from seqcast.v1 import seqcast_pb2 as pb
from seqcast.v1 import seqcast_pb2_grpc as pb_grpc

from conftest import ServerThread, committed_models, start_server

# Statuses a caller may get for a request it made up; anything else is a server bug.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

METHODS = {
    "/seqcast.v1.Translation/Translate": False,
    "/seqcast.v1.Translation/TranslateStream": True,
    "/seqcast.v1.Forecasting/Forecast": False,
    "/seqcast.v1.Models/ListModels": False,
    "/grpc.health.v1.Health/Check": False,
    "/inference.GRPCInferenceService/ModelInfer": False,
    "/inference.GRPCInferenceService/ModelMetadata": False,
}

GOOD = pb.TranslateRequest(texts=["Open the file"], max_new_tokens=4).SerializeToString()
UNPARSABLE = {
    "invalid UTF-8 in a string field": b"\x12\x02\xff\xfe",
    "truncated message": GOOD[:-3],
    "garbage": b"\xff\xff\xff\xff\xff",
    "a length past the end": b"\x12\x7fabc",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    models = committed_models(tmp_path_factory.mktemp("hostile") / "models")
    srv = start_server(models, default_model="en-de", default_forecast_model="tourism")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


def call_raw(channel: grpc.Channel, method: str, payload: bytes, timeout: float = 30) -> tuple[grpc.StatusCode, str]:
    """Sends `payload` as the request's bytes; the status and message of the reply."""
    try:
        if METHODS.get(method, False):
            for _ in channel.unary_stream(method)(payload, timeout=timeout):
                pass
        else:
            channel.unary_unary(method)(payload, timeout=timeout)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def assert_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reply = pb_grpc.TranslationStub(channel).Translate(pb.TranslateRequest(texts=["Open the file"], max_new_tokens=4), timeout=30)
    assert reply.results[0].output_tokens > 0


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("payload", list(UNPARSABLE), ids=list(UNPARSABLE))
def test_bytes_that_do_not_parse_get_invalid_argument_naming_the_message_type(channel, method: str, payload: str) -> None:
    code, message = call_raw(channel, method, UNPARSABLE[payload])
    if code is grpc.StatusCode.OK:
        # Bytes that happen to parse as this method's message (every field of ListModelsRequest
        # is optional, so unknown fields parse); nothing to refuse.
        return
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, message)
    assert message.startswith("the request is not a valid "), message
    assert "DecodeError" not in message and "Unexpected" not in message
    assert_serving(channel)


def test_malformed_requests_are_logged_once_per_interval_without_tracebacks(channel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(25):
            assert call_raw(channel, "/seqcast.v1.Translation/Translate", UNPARSABLE["garbage"])[0] is grpc.StatusCode.INVALID_ARGUMENT
    warnings = [r for r in caplog.records if r.name == "seqcast.server.malformed"]
    # The module's server may have logged a refusal for an earlier test in this interval.
    assert len(warnings) <= 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_huge_model_name_is_quoted_bounded_and_the_reply_fits_a_default_client(channel) -> None:
    name = "m" * 10_000
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.TranslationStub(channel).Translate(pb.TranslateRequest(model=name, texts=["Open the file"]), timeout=30)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "(10000 characters)" in err.value.details()
    assert len(err.value.details()) < 300
    infer = inference_pb.ModelInferRequest(model_name=name).SerializeToString()
    code, message = call_raw(channel, "/inference.GRPCInferenceService/ModelInfer", infer)
    assert code is grpc.StatusCode.NOT_FOUND and len(message) < 300, (code, message[:200])


def test_a_huge_kserve_tensor_name_is_quoted_bounded(channel) -> None:
    tensor = inference_pb.ModelInferRequest.InferInputTensor(name="t" * 50_000, datatype="NOPE", shape=[1])
    infer = inference_pb.ModelInferRequest(model_name="en-de", inputs=[tensor]).SerializeToString()
    code, message = call_raw(channel, "/inference.GRPCInferenceService/ModelInfer", infer)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "(50000 characters)" in message and len(message) <= MAX_MESSAGE_CHARS + 50


# --- the fuzz run -----------------------------------------------------------------------------

texts = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(["Open the file", "Save changes", " ", "\u0000", "🙂" * 5])), max_size=5)
decoding = st.one_of(
    st.none(),
    st.builds(lambda b, lp: pb.Decoding(beam_search=pb.BeamSearch(beam_size=b, length_penalty=lp)),
              st.integers(0, 12), st.floats(allow_nan=True, allow_infinity=True, width=32)),
    st.builds(lambda t, k, p, s: pb.Decoding(sampling=pb.Sampling(temperature=t, top_k=k, top_p=p, seed=s)),
              st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(0, 100_000),
              st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(0, 2**64 - 1)),
)
models = st.sampled_from(["", "en-de", "tourism", "no-such-model", "x" * 300])


@st.composite
def translate_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    request = pb.TranslateRequest(model=draw(models), texts=draw(texts))
    if (n := draw(st.one_of(st.none(), st.integers(0, 2**32 - 1), st.integers(1, 6)))) is not None:
        request.max_new_tokens = n
    if (n := draw(st.one_of(st.none(), st.integers(0, 2**32 - 1), st.integers(0, 4)))) is not None:
        request.min_new_tokens = n
    if (d := draw(decoding)) is not None:
        request.decoding.CopyFrom(d)
    method = draw(st.sampled_from(["/seqcast.v1.Translation/Translate", "/seqcast.v1.Translation/TranslateStream"]))
    return method, request.SerializeToString()


@st.composite
def forecast_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    value = st.one_of(st.floats(-1e3, 1e3), st.sampled_from([math.nan, math.inf, -math.inf, 1e300, 0.0]))
    series = draw(st.lists(st.lists(value, max_size=40), max_size=4))
    request = pb.ForecastRequest(model=draw(models), horizon=draw(st.integers(0, 100)), series=[pb.Series(values=s) for s in series])
    return "/seqcast.v1.Forecasting/Forecast", request.SerializeToString()


raw_requests = st.tuples(st.sampled_from(list(METHODS)), st.binary(max_size=64))


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.one_of(translate_requests(), forecast_requests(), raw_requests))
def test_fuzzed_requests_get_documented_statuses_and_the_server_keeps_serving(channel, case: tuple[str, bytes]) -> None:
    method, payload = case
    code, message = call_raw(channel, method, payload, timeout=10)
    assert code in DOCUMENTED, (method, payload[:80], code, message)
    assert len(message) <= MAX_MESSAGE_CHARS + 60


def test_the_server_serves_after_the_fuzz_run(channel) -> None:
    assert_serving(channel)


def test_refusals_are_reported_first_at_once_then_once_per_interval_with_their_count(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    from seqcast.server import malformed

    now = [100.0]
    monkeypatch.setattr(malformed.time, "monotonic", lambda: now[0])
    throttled = malformed._Throttled(interval_s=60)
    with caplog.at_level(logging.WARNING, logger="seqcast.server.malformed"):
        for _ in range(10):
            throttled.refused("/m", "why")
        now[0] += 61
        throttled.refused("/m", "latest why")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("1 malformed request(s)")
    assert lines[1].startswith("10 malformed request(s)") and "latest why" in lines[1]
