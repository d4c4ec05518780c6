"""The HTTP/JSON front end, called with a plain HTTP client (urllib) against a real server on the
committed en-de and tourism bundles: LibreTranslate's /translate and /languages, the KServe-shaped
/v1/timeseries/forecast, each error case, and the README's curl examples; answers equal what the
native API returns for the same request."""

from __future__ import annotations

import json
import re
import shlex
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from seqcast.client import SeqcastClient

from conftest import REPO, ServerThread, committed_models, start_server

TEXTS = ["Save changes", "Open the file in a new window."]
SERIES = [[float(10 + (i % 4) * 3 + i * 0.5) for i in range(20)], [float(100 - i) for i in range(12)]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    models = committed_models(tmp_path_factory.mktemp("http") / "models")
    srv = start_server(models, default_model="en-de", default_forecast_model="tourism", http_port=0, log_level="WARNING")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def native(server: ServerThread) -> Iterator[SeqcastClient]:
    with SeqcastClient(server.target) as client:
        yield client


def call(server: ServerThread, path: str, body: object = None, *, raw: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, Any]:
    """(status, decoded JSON body) of a GET (no body) or POST."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(f"http://127.0.0.1:{server.running.http_port}{path}", data=data,
                                     headers={"Content-Type": content_type} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_translate_a_string_equals_the_native_api(server: ServerThread, native: SeqcastClient) -> None:
    status, body = call(server, "/translate", {"q": TEXTS[0], "source": "en", "target": "de", "format": "text", "api_key": ""})
    assert status == 200
    assert body == {"translatedText": native.translate([TEXTS[0]])[0].text}


def test_translate_a_list_equals_the_native_api(server: ServerThread, native: SeqcastClient) -> None:
    status, body = call(server, "/translate", {"q": TEXTS, "source": "en", "target": "de"})
    assert status == 200
    assert body == {"translatedText": [r.text for r in native.translate(TEXTS)]}


def test_translate_takes_a_form_and_auto_source(server: ServerThread, native: SeqcastClient) -> None:
    form = urllib.parse.urlencode({"q": TEXTS[0], "source": "auto", "target": "de"}).encode()
    status, body = call(server, "/translate", raw=form, content_type="application/x-www-form-urlencoded")
    assert status == 200
    assert body == {"translatedText": native.translate([TEXTS[0]])[0].text,
                    "detectedLanguage": {"confidence": 100.0, "language": "en"}}


def test_languages_lists_what_the_models_translate(server: ServerThread) -> None:
    assert call(server, "/languages") == (200, [{"code": "en", "name": "English", "targets": ["de"]}])


def test_forecast_equals_the_native_api(server: ServerThread, native: SeqcastClient) -> None:
    request = {
        "model": "tourism",
        "inputs": [
            {"type": "univariate_time_series", "name": "visitors", "series": SERIES[0], "frequency": "Q",
             "start_timestamp": "2020-01-01T00:00:00Z"},
            {"name": "nights", "series": SERIES[1]},
        ],
        "options": {"horizon": 4, "quantiles": [0.1, 0.9]},
    }
    status, body = call(server, "/v1/timeseries/forecast", request)
    assert status == 200, body
    expected = native.forecast(SERIES, 4, model="tourism")
    assert body["status"] == "completed" and body["model"] == "tourism" and body["model_version"] == "1"
    first, second = (output["content"][0] for output in body["outputs"])
    for content, forecast in zip((first, second), expected.forecasts):
        assert content["mean_forecast"] == forecast.point
        assert content["quantiles"] == {"0.1": forecast.quantiles[0.1], "0.9": forecast.quantiles[0.9]}
        assert content["context_used"] == forecast.context_used
        assert content["point"] == "median"
    # 20 quarterly values from 2020-01-01: the forecast starts five years later.
    assert first["name"] == "visitors" and first["frequency"] == "Q" and first["start_timestamp"] == "2025-01-01T00:00:00Z"
    # No frequency given: the model's own; no start: none.
    assert second["frequency"] == "QS" and second["start_timestamp"] is None
    assert body["usage"] == {"prompt_tokens": 32, "completion_tokens": 8, "total_tokens": 40}


def test_forecast_without_quantiles_returns_the_point_forecast_only(server: ServerThread) -> None:
    status, body = call(server, "/v1/timeseries/forecast", {"inputs": [{"name": "a", "series": SERIES[0]}], "options": {"horizon": 2}})
    assert status == 200
    content = body["outputs"][0]["content"][0]
    assert len(content["mean_forecast"]) == 2 and "quantiles" not in content


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"source": "en", "target": "de"}, "q", "q must be a string or a list of strings"),
        ({"q": 5, "source": "en", "target": "de"}, "q", "q must be a string or a list of strings"),
        ({"q": ["Save", " "], "source": "en", "target": "de"}, "q[1]", "is empty"),
        ({"q": "x" * 5000, "source": "en", "target": "de"}, "q", "characters; at most 2000"),
        ({"q": "Save", "source": "en", "target": "de", "format": "html"}, "format", 'format "html" is not supported'),
        ({"q": "Save", "source": "en", "target": "de", "format": "markdown"}, "format", 'format must be "text"'),
        ({"q": "Save", "target": "de"}, "source", "source is missing"),
        ({"q": "Save", "source": "fr", "target": "de"}, "source", "no model translates from 'fr'; available: en->de"),
        ({"q": "Save", "source": "en", "target": "fr"}, "target", "no model translates 'en' to 'fr'"),
        ({"q": "Save", "source": "auto", "target": "fr"}, "source", 'source "auto" needs exactly one source language'),
    ],
)
def test_translate_errors_name_the_field(server: ServerThread, body: dict[str, Any], field: str, words: str) -> None:
    status, reply = call(server, "/translate", body)
    assert status == 400
    assert reply["field"] == field and words in reply["error"], reply


def test_malformed_json_is_a_400(server: ServerThread) -> None:
    status, reply = call(server, "/translate", raw=b'{"q": "Save', content_type="application/json")
    assert status == 400 and reply["field"] == "body" and "not valid JSON" in reply["error"]
    status, reply = call(server, "/translate", raw=b'["Save"]')
    assert status == 400 and reply["field"] == "body" and "must be a JSON object" in reply["error"]
    status, reply = call(server, "/v1/timeseries/forecast", raw=b"{")
    assert status == 400 and reply["error"]["param"] == "body"


GOOD_SERIES = {"name": "a", "series": SERIES[0]}


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"model": "no-such-model", "inputs": [GOOD_SERIES], "options": {"horizon": 2}}, 404, None, "'no-such-model' is not loaded"),
        ({"model": "en-de", "inputs": [GOOD_SERIES], "options": {"horizon": 2}}, 400, "model", "is a translation model"),
        ({"inputs": [], "options": {"horizon": 2}}, 400, "inputs", "inputs must be a non-empty list"),
        ({"inputs": [GOOD_SERIES], "options": {}}, 400, "options.horizon", "options.horizon must be an integer"),
        ({"inputs": [GOOD_SERIES], "options": {"horizon": 99}}, 400, "options.horizon", "horizon must be between 1 and 8"),
        ({"inputs": [{"name": "a", "series": [1.0, 2.0]}], "options": {"horizon": 2}}, 400, "inputs[0].series", "needs at least 8"),
        ({"inputs": [{"name": "a", "series": [1.0] * 9 + [float("nan")]}], "options": {"horizon": 2}}, 400, "inputs[0].series[9]",
         "must be a finite number"),
        ({"inputs": [{"name": "a", "series": ["1"] * 9}], "options": {"horizon": 2}}, 400, "inputs[0].series", "list of numbers"),
        ({"inputs": [{**GOOD_SERIES, "type": "multivariate_time_series"}], "options": {"horizon": 2}}, 400, "inputs[0].type",
         "not supported"),
        ({"inputs": [GOOD_SERIES, GOOD_SERIES], "options": {"horizon": 2}}, 400, "inputs[1].name", "unique"),
        ({"inputs": [{**GOOD_SERIES, "frequency": "fortnight"}], "options": {"horizon": 2}}, 400, "inputs[0].frequency",
         "is not one of"),
        ({"inputs": [{**GOOD_SERIES, "start_timestamp": "yesterday"}], "options": {"horizon": 2}}, 400,
         "inputs[0].start_timestamp", "ISO 8601"),
        ({"inputs": [GOOD_SERIES], "options": {"horizon": 2, "quantiles": [0.1, 0.25]}}, 400, "options.quantiles[1]",
         "forecasts the levels"),
    ],
)
def test_forecast_errors_name_the_field(server: ServerThread, body: dict[str, Any], status: int, param: str | None, words: str) -> None:
    got, reply = call(server, "/v1/timeseries/forecast", body)
    assert got == status, reply
    assert reply["status"] == "error" and reply["error"]["param"] == param and words in reply["error"]["message"], reply
    assert reply["error"]["code"] == ("NOT_FOUND" if status == 404 else "INVALID_ARGUMENT")


def test_overload_is_a_503(tmp_path_factory: pytest.TempPathFactory) -> None:
    # One decoding row and no queue: while a native stream holds the row, an HTTP call is refused at once.
    models = committed_models(tmp_path_factory.mktemp("http-overload") / "models", ("en-de",))
    srv = start_server(models, default_model="en-de", default_forecast_model="", http_port=0, max_batch_rows=1,
                       max_queued_requests=0, log_level="WARNING")
    try:
        with SeqcastClient(srv.target) as client:
            stream = client.translate_stream(["Open the file in a new window and save all changes."], max_new_tokens=128)
            next(iter(stream))
            status, reply = call(srv, "/translate", {"q": "Save", "source": "en", "target": "de"})
            assert status == 503, reply
            assert reply["field"] is None and reply["error"]
    finally:
        srv.stop()


def test_calls_are_counted_under_their_method(server: ServerThread) -> None:
    call(server, "/translate", {"q": "Save", "source": "en", "target": "de"})
    call(server, "/translate", {"q": " ", "source": "en", "target": "de"})
    call(server, "/v1/timeseries/forecast", {"inputs": [GOOD_SERIES], "options": {"horizon": 2}})

    def count(model: str, method: str, code: str) -> float:
        value = REGISTRY.get_sample_value("seqcast_request_duration_seconds_count", {"model": model, "method": method, "code": code})
        return value or 0.0

    assert count("en-de", "http.translate", "OK") >= 1
    assert count("en-de", "http.translate", "INVALID_ARGUMENT") >= 1
    assert count("tourism", "http.forecast", "OK") >= 1


def _readme_curls() -> list[tuple[str, str | None]]:
    """(path, JSON body or None) of every curl command in README.md."""
    commands = []
    for line in (REPO / "README.md").read_text().splitlines():
        if not line.startswith("curl "):
            continue
        words = shlex.split(line)
        url = next(w for w in words if "localhost:8080" in w)
        body = words[words.index("-d") + 1] if "-d" in words else None
        commands.append((re.sub(r"^(http://)?localhost:8080", "", url), body))
    return commands


def test_readme_curl_examples_work(server: ServerThread) -> None:
    commands = _readme_curls()
    assert {path for path, _ in commands} >= {"/translate", "/languages", "/v1/timeseries/forecast"}
    for path, body in commands:
        status, reply = call(server, path, raw=None if body is None else body.encode())
        assert status == 200, (path, body, reply)
