"""A real gRPC server on 127.0.0.1 with real ONNX Runtime sessions, called through the client."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from seqcast.client import SeqcastClient, SeqcastError
from seqcast.export.translation.corpus import read_split
from seqcast.v1 import seqcast_pb2 as pb
from seqcast.v1 import seqcast_pb2_grpc as pb_grpc

from conftest import CORPUS, REPO, start_server

TEXTS = [p.source for p in read_split(CORPUS, "test", 6)]


@pytest.fixture()
def client(server) -> SeqcastClient:
    with SeqcastClient(server.target) as c:
        yield c


@pytest.mark.parametrize("model", ["tiny-transformer", "tiny-gru"])
def test_translate_answers_every_text_in_order(client: SeqcastClient, model: str) -> None:
    results = client.translate(TEXTS, model=model, max_new_tokens=24)
    assert len(results) == len(TEXTS)
    for text, result in zip(TEXTS, results):
        assert result.finish_reason in ("eos", "length")
        assert result.input_tokens >= 2
        assert 0 <= result.output_tokens <= 24
    # One text alone gives what it gave inside the batch: padding never changes a result.
    alone = client.translate(TEXTS[3], model=model, max_new_tokens=24)
    assert alone[0] == results[3]


@pytest.mark.parametrize("model", ["tiny-transformer", "tiny-gru"])
def test_streamed_pieces_join_to_the_unary_result(client: SeqcastClient, model: str) -> None:
    unary = client.translate(TEXTS, model=model, max_new_tokens=32)
    joined = {i: "" for i in range(len(TEXTS))}
    finishes = {}
    for chunk in client.translate_stream(TEXTS, model=model, max_new_tokens=32):
        assert chunk.index not in finishes, "no piece after a text's last piece"
        joined[chunk.index] += chunk.text
        if chunk.finish_reason is not None:
            finishes[chunk.index] = (chunk.finish_reason, chunk.output_tokens)
    assert [joined[i] for i in range(len(TEXTS))] == [r.text for r in unary]
    assert [finishes[i] for i in range(len(TEXTS))] == [(r.finish_reason, r.output_tokens) for r in unary]


def test_an_empty_model_name_uses_the_default_model(client: SeqcastClient) -> None:
    assert client.translate(TEXTS[:2], max_new_tokens=8) == client.translate(TEXTS[:2], model="tiny-transformer", max_new_tokens=8)


def test_max_new_tokens_caps_the_output(client: SeqcastClient) -> None:
    for result in client.translate(TEXTS, max_new_tokens=1):
        assert result.output_tokens <= 1
        assert result.finish_reason in ("eos", "length")


BAD_REQUESTS = [
    (dict(texts=[]), grpc.StatusCode.INVALID_ARGUMENT, "texts is empty"),
    (dict(texts=["Open file", ""]), grpc.StatusCode.INVALID_ARGUMENT, r"texts\[1\] is empty"),
    (dict(texts=["x" * 10_000]), grpc.StatusCode.INVALID_ARGUMENT, r"texts\[0\] has 10000 characters; at most 2000"),
    (dict(texts=["word " * 300]), grpc.StatusCode.INVALID_ARGUMENT, r"texts\[0\] is \d+ tokens long; model tiny-transformer accepts at most 128"),
    (dict(texts=["Open file"], model="no-such-model"), grpc.StatusCode.NOT_FOUND, "translation model 'no-such-model' is not loaded; loaded translation models: "),
    (dict(texts=["Open file"], max_new_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens must be between 1 and 128 for model tiny-transformer, got 0"),
    (dict(texts=["Open file"], max_new_tokens=100000), grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens must be between 1 and 128 for model tiny-transformer, got 100000"),
    (dict(texts=["a"] * 65), grpc.StatusCode.INVALID_ARGUMENT, "65 texts in one request; at most 64"),
]


@pytest.mark.parametrize("request_fields, code, message", BAD_REQUESTS, ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("method", ["Translate", "TranslateStream"])
def test_bad_input_gets_a_precise_status_and_the_server_keeps_serving(channel, method, request_fields, code, message) -> None:
    stub = pb_grpc.TranslationStub(channel)
    call = getattr(stub, method)
    with pytest.raises(grpc.RpcError) as err:
        response = call(pb.TranslateRequest(**request_fields), timeout=30)
        list(response) if method == "TranslateStream" else None
    assert err.value.code() == code
    assert re.search(message, err.value.details()), err.value.details()
    good = stub.Translate(pb.TranslateRequest(texts=["Open file"], max_new_tokens=4), timeout=30)
    assert len(good.results) == 1


def test_a_passed_deadline_gets_deadline_exceeded(client: SeqcastClient) -> None:
    with pytest.raises(SeqcastError) as err:
        client.translate(TEXTS * 10, max_new_tokens=128, timeout=0.001)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.translate("Open file", max_new_tokens=4)


def test_list_models_reports_limits_and_execution_provider(client: SeqcastClient) -> None:
    models = {m.name: m for m in client.list_models() if m.task == "translation"}
    assert set(models) == {"tiny-transformer", "tiny-gru"}
    assert models["tiny-transformer"].architecture == "transformer"
    assert models["tiny-gru"].architecture == "gru-attention"
    limits = {"tiny-transformer": (128, 128), "tiny-gru": (48, 128)}  # the GRU trains on --max-tokens 48
    for m in models.values():
        assert m.execution_provider == "CPUExecutionProvider"
        assert (m.max_source_tokens, m.max_new_tokens) == limits[m.name]
        assert m.task == "translation"
    assert models["tiny-transformer"].is_default


def test_health_is_reported_per_model_and_per_service(channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", "tiny-transformer", "tiny-gru", "seqcast.v1.Translation", "seqcast.v1.Models"]:
        assert stub.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"seqcast.v1.Translation", "seqcast.v1.Forecasting", "seqcast.v1.Models", "grpc.health.v1.Health"} <= names


def test_a_corrupted_bundle_is_refused_and_the_others_keep_serving(copy_models, caplog) -> None:
    models = copy_models()
    decoder = models / "tiny-gru" / "1" / "decoder.onnx"
    data = bytearray(decoder.read_bytes())
    data[len(data) // 2] ^= 0xFF
    decoder.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="seqcast.server.models"):
        srv = start_server(models)
    try:
        refusals = [r.getMessage() for r in caplog.records if "refusing bundle" in r.getMessage()]
        assert len(refusals) == 1
        assert "tiny-gru" in refusals[0] and "checksum mismatch for decoder.onnx" in refusals[0]
        with SeqcastClient(srv.target) as c:
            assert [m.name for m in c.list_models() if m.task == "translation"] == ["tiny-transformer"]
            assert c.translate("Open file", model="tiny-transformer", max_new_tokens=4)
            with pytest.raises(SeqcastError) as err:
                c.translate("Open file", model="tiny-gru")
            assert err.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        srv.stop()


def test_seqcast_serve_starts_answers_and_stops_on_sigterm(model_dir: Path) -> None:
    """The README's path: `seqcast serve` as a process, called by `seqcast-client`."""
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [bin_dir / "seqcast", "serve", "--model-dir", str(model_dir), "--port", "0", "--metrics-port", "0", "--default-model", "tiny-transformer"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    try:
        address = None
        for line in proc.stdout:
            if m := re.search(r"listening on (\S+)", line):
                address = m.group(1)
                break
        assert address, "server did not report its address"
        out = subprocess.run(
            [bin_dir / "seqcast-client", "--target", address, "translate", "Open file", "Save changes"],
            capture_output=True, text=True, timeout=60, env={**os.environ},
        )
        assert out.returncode == 0, out.stderr
        assert len(out.stdout.splitlines()) == 2
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_a_full_queue_answers_resource_exhausted_without_waiting(model_dir: Path) -> None:
    srv = start_server(model_dir, max_queued_requests=1)
    scheduler = srv.running.registry.models["tiny-transformer"].scheduler
    scheduler.hold()  # queued requests wait until released
    try:
        with SeqcastClient(srv.target) as client, ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.translate, "Open file", max_new_tokens=4)
            deadline = time.monotonic() + 30
            while scheduler.queued < 1 and time.monotonic() < deadline:  # admitted, waiting to join
                time.sleep(0.01)
            assert scheduler.queued == 1
            # Refused while the first still waits: the answer did not wait for it.
            with pytest.raises(SeqcastError) as err:
                client.translate("Save changes", max_new_tokens=4, timeout=30)
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "requests waiting (limit 1); retry with backoff" in err.value.message
            assert not first.done()
            scheduler.release()
            assert len(first.result(timeout=30)) == 1  # the admitted request is served
            assert client.translate("Save changes", max_new_tokens=4)  # and the server goes on
    finally:
        scheduler.release()
        srv.stop()
