"""The serving engine on the real server: in-flight batching never changes results, beam search
and sampling, cancellation and deadlines free rows, metrics, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from seqcast.client import BeamSearch, Sampling, SeqcastClient, SeqcastError
from seqcast.export.translation.corpus import read_split
from seqcast.v1 import seqcast_pb2 as pb
from seqcast.v1 import seqcast_pb2_grpc as pb_grpc

from conftest import CORPUS, start_server

TEXTS = [p.source for p in read_split(CORPUS, "test", 24)]
TRANSLATORS = ["tiny-transformer", "tiny-gru"]
# High temperature: tokens are close to uniform, so end-of-sequence is rare and rows run long.
LONG = Sampling(temperature=5.0, seed=1)


@pytest.fixture()
def client(server):
    with SeqcastClient(server.target) as c:
        yield c


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("model", TRANSLATORS)
def test_concurrent_requests_of_different_lengths_each_return_what_they_return_alone(client, model) -> None:
    alone = [client.translate(t, model=model, max_new_tokens=32)[0].text for t in TEXTS]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda t: client.translate(t, model=model, max_new_tokens=32)[0].text, TEXTS))
    assert together == alone
    if model == "tiny-transformer":  # the tiny GRU is barely trained; its outputs vary little
        assert len(set(alone)) > 8, "the model must produce varied, real outputs"


def test_concurrent_forecasts_each_return_what_they_return_alone(client) -> None:
    series = [[float(10 + (i * 7 + k) % 13) for k in range(8 + i)] for i in range(16)]
    alone = [client.forecast([s], horizon=8).forecasts[0].point for s in series]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda s: client.forecast([s], horizon=8).forecasts[0].point, series))
    for a, b in zip(alone, together):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("model", TRANSLATORS)
def test_beam_search_of_size_one_equals_greedy(client, model) -> None:
    greedy = client.translate(TEXTS, model=model, max_new_tokens=32)
    beam = client.translate(TEXTS, model=model, max_new_tokens=32, decoding=BeamSearch(beam_size=1))
    assert [b.text for b in beam] == [g.text for g in greedy]
    assert [b.finish_reason for b in beam] == [g.finish_reason for g in greedy]


def test_beam_search_answers_every_text_and_streams_its_hypothesis_whole(client) -> None:
    beams = client.translate(TEXTS[:8], max_new_tokens=32, decoding=BeamSearch(beam_size=4))
    assert all(b.text for b in beams)
    chunks = list(client.translate_stream(TEXTS[0], max_new_tokens=32, decoding=BeamSearch(beam_size=4)))
    assert "".join(c.text for c in chunks) == beams[0].text
    assert chunks[-1].finish_reason in ("eos", "length")


def test_sampling_with_a_seed_is_reproducible_even_under_concurrent_load(client) -> None:
    options = Sampling(temperature=1.5, top_k=50, top_p=0.95, seed=7)
    first = [r.text for r in client.translate(TEXTS[:6], max_new_tokens=24, decoding=options)]
    with ThreadPoolExecutor(6) as pool:
        noise = [pool.submit(client.translate, t, max_new_tokens=24) for t in TEXTS[6:12]]
        again = [r.text for r in client.translate(TEXTS[:6], max_new_tokens=24, decoding=options)]
        for f in noise:
            f.result()
    assert again == first
    other = [r.text for r in client.translate(TEXTS[:6], max_new_tokens=24, decoding=Sampling(temperature=1.5, seed=8))]
    assert other != first


@pytest.mark.parametrize(
    ("decoding", "message"),
    [
        (BeamSearch(beam_size=9), "beam_search.beam_size must be between 1 and 8"),
        (BeamSearch(beam_size=0), "beam_search.beam_size must be between 1 and 8"),
        (Sampling(temperature=0.0), "sampling.temperature must be above 0"),
        (Sampling(top_p=1.5), "sampling.top_p must be above 0 and at most 1"),
    ],
)
def test_bad_decoding_options_are_refused(client, decoding, message) -> None:
    with pytest.raises(SeqcastError) as err:
        client.translate("Open file", decoding=decoding)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.message


def _inflight_gauge(server, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(f'seqcast_inflight_requests{{model="{model}"}}'):
            return float(line.split()[-1])
    raise AssertionError("no seqcast_inflight_requests series for the model")


def test_a_cancelled_stream_frees_its_rows_before_they_reach_their_limit(server, client) -> None:
    scheduler = server.running.registry.models["tiny-transformer"].scheduler
    steps_before = scheduler.timings.steps
    # 64 rows of up to 128 sampled tokens: far longer than the cancellation takes to arrive.
    stream = client.translate_stream(["Open the file"] * 64, max_new_tokens=128, decoding=LONG)
    next(iter(stream))
    assert scheduler.inflight == 1 and _inflight_gauge(server, "tiny-transformer") == 1
    stream.close()  # cancels the call
    wait_for(lambda: scheduler.inflight == 0 and scheduler.rows == 0)
    wait_for(lambda: _inflight_gauge(server, "tiny-transformer") == 0)
    assert scheduler.timings.steps - steps_before < 128, "decoding stopped at the cancel, not at the limit"


def test_a_passed_deadline_answers_deadline_exceeded_and_frees_the_row(server, client) -> None:
    scheduler = server.running.registry.models["tiny-transformer"].scheduler
    encoded = scheduler.timings.encoder_calls
    with pytest.raises(SeqcastError) as err:
        # 64 rows of up to 128 sampled tokens: far more than 0.1 s of decoding.
        client.translate(["Open the file"] * 64, max_new_tokens=128, decoding=LONG, timeout=0.1)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert scheduler.timings.encoder_calls > encoded, "the request reached the decode batch"
    wait_for(lambda: scheduler.inflight == 0 and scheduler.rows == 0)
    assert client.translate("Open file", max_new_tokens=4)


def test_metrics_from_the_live_server_pass_promtool(server, client) -> None:
    client.translate(TEXTS[:4], max_new_tokens=8)
    client.forecast([[1.0, 2.0, 3.0, 4.0] * 3], horizon=4)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for name in ("seqcast_time_to_first_token_seconds_bucket", "seqcast_decode_batch_rows_bucket",
                 'seqcast_request_duration_seconds_count{code="OK",method="Translate",model="tiny-transformer"}',
                 'seqcast_model_info{architecture="transformer",execution_provider="CPUExecutionProvider"'):
        assert name in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_sigterm_under_load_finishes_every_accepted_request(model_dir: Path) -> None:
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [bin_dir / "seqcast", "serve", "--model-dir", str(model_dir), "--port", "0", "--metrics-port", "0",
         "--default-model", "tiny-transformer"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "SEQCAST_LOG_LEVEL": "WARNING"},
    )
    try:
        target = None
        for line in proc.stdout:
            if "listening on" in line:
                target = line.split("listening on")[1].split()[0]
                break
        assert target, "the server did not start"
        with SeqcastClient(target) as client, ThreadPoolExecutor(8) as pool:
            client.wait_ready(30)
            started: list[int] = []  # list.append is atomic across threads

            def stream(i: int) -> list:
                chunks = []
                for chunk in client.translate_stream(TEXTS[i], max_new_tokens=48, decoding=Sampling(temperature=5.0, seed=i)):
                    chunks.append(chunk)
                    if len(chunks) == 1:
                        started.append(i)
                return chunks

            futures = [pool.submit(stream, i) for i in range(8)]
            wait_for(lambda: len(started) == 8, timeout=60)
            proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=60) for f in futures]
        for chunks in results:
            assert chunks[-1].finish_reason in ("eos", "length"), "every accepted request ran to its end"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_burst_of_300_streams_is_admitted_as_far_as_the_rows_allow(model_dir: Path) -> None:
    """300 streams opened at once: every one the batch can take is admitted (256 rows), and only
    what can neither join nor wait (max_queued_requests 8) is refused, at once."""
    srv = start_server(model_dir, max_batch_rows=256, max_queued_requests=8)
    request = pb.TranslateRequest(model="tiny-transformer", texts=["Open the file"], max_new_tokens=48, min_new_tokens=48)

    async def one(stub: pb_grpc.TranslationStub) -> str:
        try:
            chunks = [c async for c in stub.TranslateStream(request, timeout=120)]
            return "OK" if chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH else "SHORT"
        except grpc.aio.AioRpcError as e:
            return e.code().name

    async def burst() -> list[str]:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            stub = pb_grpc.TranslationStub(channel)
            await channel.channel_ready()
            return await asyncio.gather(*(one(stub) for _ in range(300)))

    try:
        outcomes = asyncio.run(burst())
        counts = {o: outcomes.count(o) for o in set(outcomes)}
        assert set(counts) <= {"OK", "RESOURCE_EXHAUSTED"}, counts
        assert counts["OK"] >= 256 + 8, counts
        rows = srv.running.registry.models["tiny-transformer"].scheduler
        assert rows.inflight == 0 and rows.queued == 0
    finally:
        srv.stop()
