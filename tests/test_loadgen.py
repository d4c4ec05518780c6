"""The load generator: its statistics on hand-made records, its bounds against a server that never
finishes, and `run_load` and `seqcast-client bench` against the real test server."""

import json
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import fields
from pathlib import Path

import grpc
import pytest

from seqcast.client.cli import main
from seqcast.client.loadgen import LoadSummary, Progress, RequestRecord, run_load, summarize
from seqcast.v1 import seqcast_pb2, seqcast_pb2_grpc


def record(start: float, chunks: list[tuple[float, int]], end: float, status: str = "OK") -> RequestRecord:
    """A request started at `start` whose chunks arrived at (time, output tokens so far)."""
    return RequestRecord(start, end, tuple(t for t, _ in chunks), tuple(n for _, n in chunks), status)


# A run with a warm-up until 1 s and sending stopped at 3 s (times in seconds).
RECORDS = [
    record(0.2, [], 0.3, "UNAVAILABLE"),  # warm-up: not an error of the measurement
    record(0.5, [(0.6, 1), (0.8, 2), (1.2, 3)], 1.25),  # warm-up, but ends (and one token) in the window
    record(1.0, [(1.1, 1), (1.2, 2), (1.4, 3)], 1.5),  # ttft 100, gaps 100 and 200, e2e 500
    record(1.5, [(1.8, 2), (1.9, 4)], 2.0),  # two tokens per chunk: ttft 300, gap 100, e2e 500
    record(2.0, [(2.1, 1), (2.5, 2)], 3.5),  # ends after the window: ttft 100, gap 400, e2e 1500
    record(2.2, [], 2.3, "UNAVAILABLE"),
    record(2.4, [(2.6, 1)], 2.7, "DEADLINE_EXCEEDED"),  # its token counts for throughput
]


def test_summary_counts_measured_requests_and_errors_by_status() -> None:
    s = summarize(RECORDS, concurrency=4, window_start=1.0, window_end=3.0)
    assert (s.concurrency, s.window_start_s, s.window_s) == (4, 1.0, 2.0)
    assert s.completed == 3
    assert s.errors == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 1}
    assert s.warmup_requests == 2


def test_throughput_counts_what_happened_inside_the_window() -> None:
    s = summarize(RECORDS, concurrency=4, window_start=1.0, window_end=3.0)
    # OK requests ending in [1, 3): the warm-up one at 1.25, those at 1.5 and 2.0; not the one at 3.5.
    assert s.requests_per_s == pytest.approx(3 / 2.0)
    # Tokens arriving in [1, 3): 1 (warm-up request) + 3 + 4 + 2 + 1 (failed request).
    assert s.output_tokens_per_s == pytest.approx(11 / 2.0)


def test_percentiles_interpolate_linearly() -> None:
    s = summarize(RECORDS, concurrency=4, window_start=1.0, window_end=3.0)
    # ttft [100, 100, 300]: p90 sits at position 0.9 * 2 = 1.8, p99 at 1.98.
    assert s.ttft_p50_ms == pytest.approx(100)
    assert s.ttft_p90_ms == pytest.approx(100 + 0.8 * 200)
    assert s.ttft_p99_ms == pytest.approx(100 + 0.98 * 200)
    # Gaps pooled over requests [100, 100, 200, 400]: p50 at 1.5, p99 at 2.97.
    assert s.itl_p50_ms == pytest.approx(150)
    assert s.itl_p99_ms == pytest.approx(200 + 0.97 * 200)
    # e2e [500, 500, 1500].
    assert s.e2e_p50_ms == pytest.approx(500)
    assert s.e2e_p99_ms == pytest.approx(500 + 0.98 * 1000)


def test_warmup_moves_requests_out_of_the_latencies() -> None:
    everything = summarize(RECORDS, concurrency=4, window_start=0.0, window_end=3.0)
    assert (everything.completed, everything.warmup_requests) == (4, 0)
    assert everything.errors == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 2}
    # The warm-up request's ttft of 100 ms joins [100, 100, 300]; its e2e of 750 ms joins [500, 500, 1500].
    assert everything.ttft_p50_ms == pytest.approx(100)
    assert everything.e2e_p50_ms == pytest.approx(625)
    assert everything.requests_per_s == pytest.approx(3 / 3.0)


def test_nothing_measured_gives_no_numbers() -> None:
    s = summarize([], concurrency=2, window_start=1.0, window_end=1.0)
    assert (s.completed, s.errors, s.warmup_requests, s.window_s) == (0, {}, 0, 0.0)
    assert s.requests_per_s is None and s.output_tokens_per_s is None
    assert s.ttft_p50_ms is None and s.itl_p99_ms is None and s.e2e_p99_ms is None


def test_impossible_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="warmup"):
        run_load("127.0.0.1:1", concurrency=1, duration=2, warmup=2)
    with pytest.raises(ValueError, match="concurrency"):
        run_load("127.0.0.1:1", concurrency=0, duration=2)


# --- bounds, against a server whose streams never end ---


class Stuck(seqcast_pb2_grpc.TranslationServicer):
    """Sends one piece, then holds the stream open until the client goes away."""

    def TranslateStream(self, request, context) -> Iterator[seqcast_pb2.TranslateChunk]:
        yield seqcast_pb2.TranslateChunk(index=0, text="Hallo", input_tokens=2, output_tokens=1)
        while context.is_active():
            time.sleep(0.01)


@pytest.fixture(scope="module")
def stuck_target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    seqcast_pb2_grpc.add_TranslationServicer_to_server(Stuck(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_stragglers_are_cancelled_at_the_drain_cap(stuck_target: str) -> None:
    progress: list[Progress] = []
    began = time.monotonic()
    s = run_load(stuck_target, concurrency=3, duration=1.0, drain_timeout=0.5, on_progress=progress.append)
    assert time.monotonic() - began < 5
    assert s.completed == 0
    assert s.errors == {"CANCELLED": 3}  # one request per client, each cancelled
    assert s.output_tokens_per_s == pytest.approx(3 / s.window_s)  # their first pieces arrived
    assert progress and progress[0].elapsed >= 1.0 and progress[0].in_flight == 3


# --- the real server ---


def test_run_load_against_the_server(server) -> None:
    s = run_load(server.target, concurrency=4, duration=2, max_new_tokens=8, model="tiny-transformer")
    assert s.errors == {}
    assert s.completed >= 4
    assert s.requests_per_s > 0 and s.output_tokens_per_s > 0
    assert s.ttft_p50_ms <= s.e2e_p50_ms


def test_bench_prints_the_summary_as_json(server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("Save changes\n\nThe file could not be opened.\n")
    argv = ["--target", server.target, "bench", "--concurrency", "2", "--duration", "5", "--max-new-tokens", "4",
            "--texts", str(texts), "--max-requests", "6", "--json", "--quiet"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert set(summary) == {f.name for f in fields(LoadSummary)}
    assert (summary["concurrency"], summary["completed"], summary["errors"]) == (2, 6, {})
    assert summary["window_s"] < 5  # sending stopped at the sixth request
    assert "in flight" not in captured.err  # --quiet: no progress lines


def test_bench_prints_a_table_and_progress(server, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--target", server.target, "bench", "--concurrency", "2", "--duration", "1.5", "--max-new-tokens", "4"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split()[0] for line in lines[:5]] == ["concurrency", "window", "completed", "errors", "throughput"]
    assert lines[3].split() == ["errors", "none"]
    assert [line.split("  ")[0] for line in lines[6:]] == ["LATENCY (ms)", "time to first token", "inter-token", "end to end"]
    assert any(line.endswith("in flight") for line in captured.err.splitlines())  # a progress line at 1 s


def test_bench_with_an_unknown_model_fails_before_the_run(server, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", server.target, "bench", "--concurrency", "2", "--duration", "30", "--model", "nope"]) == 1
    assert capsys.readouterr().err.startswith("error: NOT_FOUND: ")
