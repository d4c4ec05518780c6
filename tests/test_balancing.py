"""Client-side load balancing: calls spread round robin over every address of the target."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from conftest import REPO, ServerThread, start_server
from seqcast.client import SeqcastClient

MODELS = REPO / "models"
SERIES = [[float(10 + (i % 4) * 3 + i * 0.1) for i in range(160)]]  # enough context for either model


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[ServerThread]]:
    # Two replicas told apart by their default forecast model.
    servers = [start_server(MODELS, default_model="en-de", default_forecast_model=name) for name in ("tourism", "vic-elec")]
    yield servers
    for srv in servers:
        srv.stop()


def test_calls_spread_round_robin_over_the_targets_addresses(replicas: list[ServerThread]) -> None:
    # The address list a DNS name of a headless Service resolves to, written out.
    target = "ipv4:" + ",".join(srv.target for srv in replicas)
    with SeqcastClient(target) as client:
        client.wait_ready(10)
        answered = Counter(client.forecast(SERIES, horizon=2, timeout=10).model for _ in range(20))
    assert answered["tourism"] >= 5 and answered["vic-elec"] >= 5, answered  # pick_first would send all 20 to one


def test_dns_targets_resolve(replicas: list[ServerThread]) -> None:
    with SeqcastClient(f"dns:///localhost:{replicas[0].running.port}") as client:
        assert client.forecast(SERIES, horizon=2, timeout=10).model == "tourism"


def test_connections_past_their_maximum_age_are_replaced_without_failing_calls() -> None:
    srv = start_server(MODELS, default_model="en-de", default_forecast_model="tourism",
                       max_connection_age_seconds=0.3, drain_seconds=2)
    try:
        with SeqcastClient(srv.target) as client:
            for _ in range(8):
                assert client.forecast(SERIES, horizon=2, timeout=10).model == "tourism"
                assert [t.text for t in client.translate(["Save changes"], max_new_tokens=8, timeout=10)]
                time.sleep(0.15)
    finally:
        srv.stop()
