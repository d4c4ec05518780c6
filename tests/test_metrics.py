"""Metrics: the /metrics endpoint serves every seqcast metric, and promtool accepts the output.

Metrics live in the process-wide default registry, so each test uses its own model label.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from seqcast.server import metrics
from seqcast.server.metrics import MetricsServer, start_metrics_server

# Every metric the server exports, with its type.
METRICS = {
    "seqcast_request_duration_seconds": "histogram",
    "seqcast_queue_duration_seconds": "histogram",
    "seqcast_time_to_first_token_seconds": "histogram",
    "seqcast_inter_token_latency_seconds": "histogram",
    "seqcast_encoder_duration_seconds": "histogram",
    "seqcast_decoder_step_duration_seconds": "histogram",
    "seqcast_decode_batch_rows": "histogram",
    "seqcast_input_tokens_total": "counter",
    "seqcast_output_tokens_total": "counter",
    "seqcast_inflight_requests": "gauge",
    "seqcast_queue_requests": "gauge",
    "seqcast_model_info": "gauge",
}


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    running = start_metrics_server("127.0.0.1", 0)
    yield running
    running.stop()


def record_one_request(model: str) -> None:
    """What the server records for one small translation, through the recorders it calls."""
    metrics.set_model_info(model, "1", "translation", "transformer", "CPUExecutionProvider")
    decoding = metrics.DecodeMetrics(model)
    decoding.requests(queued=1, inflight=0)
    decoding.joined(encoder_seconds=0.0004, input_tokens=17, queue_waits=[0.0012])
    decoding.requests(queued=0, inflight=1)
    decoding.step(rows=3, seconds=0.00008)
    decoding.delivered(3, first_tokens=[0.002, 0.002, 0.0021], gaps=[])
    decoding.step(rows=3, seconds=0.00009)
    decoding.delivered(3, first_tokens=[], gaps=[0.0001, 0.0001, 0.00011])
    metrics.observe_request(model, "Translate", grpc.StatusCode.OK, 0.004)
    metrics.observe_request(model, "Translate", grpc.StatusCode.INVALID_ARGUMENT, 0.00003)
    decoding.requests(queued=0, inflight=0)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def test_the_exposition_passes_promtool(server: MetricsServer) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not in .tools/bin or on PATH: run the project's setup "
                    "(`make test`, or `bash scripts/install-deploy-tools.sh .venv`)")
    record_one_request("metrics-promtool")
    text = scrape(server.port)
    assert 'seqcast_model_info{architecture="transformer",execution_provider="CPUExecutionProvider",' \
           'model="metrics-promtool",task="translation",version="1"} 1.0' in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, f"promtool check metrics:\n{checked.stdout}{checked.stderr}"


def test_every_metric_is_exported_with_help_type_and_wide_latency_buckets(server: MetricsServer) -> None:
    record_one_request("metrics-names")
    text = scrape(server.port)
    for name, kind in METRICS.items():
        assert f"\n# HELP {name} " in text, name
        assert f"\n# TYPE {name} {kind}\n" in text, name
        assert any(line.startswith(name) and 'model="metrics-names"' in line for line in text.splitlines()), name

    for family in text_string_to_metric_families(text):
        if family.name.startswith("seqcast_") and family.name.endswith("_seconds") and family.type == "histogram":
            bounds = {float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")}
            assert min(bounds) <= 0.0001, family.name  # a GPU decoder step
            assert max(bounds - {float("inf")}) >= 30, family.name  # a long CPU request


def test_forget_model_removes_only_that_models_series(server: MetricsServer) -> None:
    record_one_request("metrics-gone")
    record_one_request("metrics-kept")
    metrics.forget_model("metrics-gone")
    text = scrape(server.port)
    assert 'model="metrics-gone"' not in text
    assert 'model="metrics-kept"' in text


def test_a_reload_replaces_the_model_info_series(server: MetricsServer) -> None:
    metrics.set_model_info("metrics-reload", "1", "forecast", "lstm-dot", "CPUExecutionProvider")
    metrics.set_model_info("metrics-reload", "2", "forecast", "lstm-dot", "CUDAExecutionProvider")
    info = [line for line in scrape(server.port).splitlines()
            if line.startswith("seqcast_model_info{") and 'model="metrics-reload"' in line]
    assert len(info) == 1 and 'version="2"' in info[0] and "CUDAExecutionProvider" in info[0]


def test_stop_frees_the_port() -> None:
    first = start_metrics_server("127.0.0.1", 0)
    port = first.port
    assert port > 0 and scrape(port)
    first.stop()
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    second = start_metrics_server("127.0.0.1", port)
    try:
        assert second.port == port and scrape(port)
    finally:
        second.stop()


def test_a_scheduler_keeps_exporting_after_another_server_forgets_its_model_name(server: MetricsServer) -> None:
    # Two servers in one process share the default registry: when one unloads a model, the other's
    # scheduler, serving a model of the same name, looks its series up again.
    decoding = metrics.DecodeMetrics("metrics-shared")
    decoding.requests(queued=0, inflight=2)
    metrics.forget_model("metrics-shared")
    assert 'seqcast_inflight_requests{model="metrics-shared"}' not in scrape(server.port)
    decoding.requests(queued=0, inflight=3)
    decoding.step(rows=3, seconds=0.001)
    text = scrape(server.port)
    assert 'seqcast_inflight_requests{model="metrics-shared"} 3.0' in text
    assert 'seqcast_decode_batch_rows_count{model="metrics-shared"} 1.0' in text


def test_while_a_reload_drains_the_request_gauges_sum_both_versions(server: MetricsServer) -> None:
    old, new = metrics.DecodeMetrics("metrics-reload"), metrics.DecodeMetrics("metrics-reload")
    old.requests(queued=0, inflight=3)
    new.requests(queued=1, inflight=2)
    text = scrape(server.port)
    assert 'seqcast_inflight_requests{model="metrics-reload"} 5.0' in text
    assert 'seqcast_queue_requests{model="metrics-reload"} 1.0' in text
    old.requests(queued=0, inflight=0)  # the old version's last request finished
    new.requests(queued=0, inflight=2)
    assert 'seqcast_inflight_requests{model="metrics-reload"} 2.0' in scrape(server.port)
    old.close()
    new.requests(queued=0, inflight=4)
    assert 'seqcast_inflight_requests{model="metrics-reload"} 4.0' in scrape(server.port)
    metrics.forget_model("metrics-reload")
