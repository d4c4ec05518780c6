"""The observability kit in deploy/ against a live server: the Grafana dashboard, the
PrometheusRule alerts and the prometheus-adapter rules.

A real seqcast server serves the bundled models and real traffic (translations, streams, forecasts
and failing calls); a real Prometheus (Debian's package) scrapes it every second and evaluates the
alert rules, extracted from the PrometheusRule's `spec`. Every query of the dashboard and of the
rules then has to parse and return data, so a renamed metric or label breaks this test rather than
a dashboard in production. The dashboard's structure and its kustomize ConfigMap are checked
without Prometheus.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client import REGISTRY

import seqcast.server.metrics
from seqcast.client import SeqcastClient, SeqcastError

from conftest import start_server

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "seqcast.json"
PROMETHEUS_RULE = REPO / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
JOB = "seqcast"  # the job label a ServiceMonitor on Service "seqcast" gives the scraped pods

# Grafana's variables in the dashboard's queries, as Prometheus evaluates them here. The window is
# wider than Grafana's $__rate_interval (4 scrapes) so that it holds both waves of traffic and
# every scrape since, however slowly this machine runs the test.
RATE_WINDOW = "5m"
GRAFANA_VARIABLES = {"$__rate_interval": RATE_WINDOW, "${model}": ".*", "$model": ".*"}

TEXTS = ["Save the file.", "Open a new window.", "The password is too short.", "Delete this account?",
         "Good morning.", "Your changes have been saved.", "Select a language.", "Close the dialog."]
TOURISM = REPO / "data" / "forecast" / "tourism-sample.csv"

T = TypeVar("T")


# --- the dashboard -------------------------------------------------------------------------------

def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def data_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data: rows are layout only (a collapsed row holds its panels)."""
    panels = []
    for panel in board["panels"]:
        panels.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title and refId, PromQL with Grafana's variables) for every target of the dashboard."""
    return [(f'{panel["title"]!r} {target["refId"]}', target["expr"])
            for panel in data_panels(dashboard()) for target in panel["targets"]]


def as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_every_panel_has_a_title_the_datasource_variable_and_a_query() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["definition"] == "label_values(seqcast_model_info, model)"
    assert model["multi"] and model["includeAll"]
    for panel in data_panels(board):
        assert panel.get("title"), f"panel {panel['id']} has no title"
        where = f"panel {panel['title']!r}"
        assert panel["datasource"]["uid"] == "${datasource}", where
        assert panel.get("description"), where
        assert panel["fieldConfig"]["defaults"].get("unit"), where
        assert panel["targets"], f"{where} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", where
            assert target["expr"].strip(), where
    ids = [p["id"] for p in board["panels"]] + [p["id"] for row in board["panels"] for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_query_filters_by_the_model_variable_and_rates_over_the_rate_interval() -> None:
    for where, expr in dashboard_queries():
        for selector in re.finditer(r"\bseqcast_[a-z_]+(\{[^}]*\})?", expr):
            assert 'model=~"$model"' in (selector.group(1) or ""), f"{where}: {selector.group(0)}"
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window == "$__rate_interval", f"{where}: a fixed window [{window}]"


def test_every_metric_the_dashboard_names_is_one_the_server_exports() -> None:
    text = DASHBOARD.read_text()
    named = set(re.findall(r"\bseqcast_[a-z_]+", text))
    assert named, "the dashboard names no seqcast metric"
    assert named <= seqcast.server.metrics.series_names(), f"not exported by server/metrics.py: {sorted(named - seqcast.server.metrics.series_names())}"


def test_kustomize_renders_the_dashboard_as_a_configmap_for_the_grafana_sidecar() -> None:
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if kubectl is None:
        pytest.skip("kubectl is not installed (scripts/install-deploy-tools.sh puts it into .venv/bin)")
    rendered = subprocess.run([kubectl, "kustomize", str(DASHBOARD.parent)], capture_output=True, text=True,
                              timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    (configmap,) = [d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["name"] == "seqcast-dashboard"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["seqcast.json"]) == dashboard()


# --- the rules -----------------------------------------------------------------------------------

def rule_groups() -> list[dict[str, Any]]:
    """The groups of the PrometheusRule(s) in deploy/, as a plain Prometheus rules file holds them."""
    if not PROMETHEUS_RULE.exists():
        return []
    documents = [d for d in yaml.safe_load_all(PROMETHEUS_RULE.read_text()) if d]
    return [group for d in documents if d.get("kind") == "PrometheusRule" for group in d["spec"]["groups"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")


def split_threshold(expr: str) -> tuple[str, str] | None:
    """`SIGNAL > 0.05` -> (SIGNAL, "> 0.05"): the last comparison outside any brackets and strings,
    when a number follows it; None when `expr` does not end in one."""
    depth, quote, last, i = 0, "", None, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            i += 2 if c == "\\" else 1
            quote = "" if c == quote else quote
            continue
        if c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and (match := _COMPARISON.match(expr, i)):
            last = match
            i = match.end()
            continue
        i += 1
    if last is None:
        return None
    threshold = expr[last.end():].strip().removeprefix("bool").strip()
    try:
        float(threshold)
    except ValueError:
        return None
    return expr[:last.start()].strip(), expr[last.start():].strip()


def adapter_rules() -> list[tuple[str, dict[str, Any]]]:
    """(file, rule) for every prometheus-adapter rule (a `seriesQuery` with a `metricsQuery`) in
    deploy/, also inside a ConfigMap's or Helm values' embedded config."""
    found = []
    for path in sorted((REPO / "deploy").rglob("*.y*ml")):
        text = path.read_text()
        if "metricsQuery" in text:
            for document in yaml.safe_load_all(text):
                found += [(str(path.relative_to(REPO)), rule) for rule in _find_adapter_rules(document)]
    return found


def _find_adapter_rules(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "seriesQuery" in node and "metricsQuery" in node:
            yield node
        else:
            for value in node.values():
                yield from _find_adapter_rules(value)
    elif isinstance(node, list):
        for value in node:
            yield from _find_adapter_rules(value)
    elif isinstance(node, str) and "metricsQuery" in node:
        yield from _find_adapter_rules(yaml.safe_load(node))


def adapter_promql(rule: dict[str, Any]) -> str:
    """The metricsQuery as the adapter sends it for all of job "seqcast"."""
    series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"])
    assert series, f"seriesQuery {rule['seriesQuery']!r} names no metric"
    return (rule["metricsQuery"].replace("<<.Series>>", series.group(1))
            .replace("<<.LabelMatchers>>", f'job="{JOB}"').replace("<<.GroupBy>>", "job"))


def test_the_threshold_split_finds_the_top_level_comparison() -> None:
    assert split_threshold('sum(rate(x{code!="OK"}[5m])) / sum(rate(x[5m])) > 0.05') == (
        'sum(rate(x{code!="OK"}[5m])) / sum(rate(x[5m]))', "> 0.05")
    assert split_threshold('max(up{job="a>b"}) == bool 0') == ('max(up{job="a>b"})', "== bool 0")
    assert split_threshold("sum(x > 1)") is None
    assert split_threshold("a > b") is None


def test_promtool_accepts_the_extracted_rules(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (bash scripts/install-deploy-tools.sh .venv puts it in .tools/bin)")
    if not rule_groups():
        pytest.skip(f"no PrometheusRule in {PROMETHEUS_RULE.relative_to(REPO)}")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}))
    checked = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- the live stack ------------------------------------------------------------------------------

def wait_for(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Polls `condition` until it returns something true; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(0.2)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Prometheus:
    """A Prometheus server in a subprocess, and its HTTP API."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @classmethod
    def start(cls, directory: Path, scrape_port: int, rules: Path | None) -> Prometheus:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)] if rules else [],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{scrape_port}"]}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        port, log = free_port(), directory / "prometheus.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["prometheus", f"--config.file={directory / 'prometheus.yml'}",
                 f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT)
        return cls(process, f"http://127.0.0.1:{port}", log)

    def ready(self) -> bool:
        assert self.process.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:  # not listening yet, or 503 while starting
            return False

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; failed queries come back as their JSON error, not an exception."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:  # 400 (bad query), 422 (evaluation failed): JSON bodies
            return json.load(e)

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def query_data(self, expr: str, timeout: float = 10.0) -> dict[str, Any]:
        """The response to `expr` once it has data (see `has_data`), or the last one after `timeout` s:
        a scrape that timed out on a busy machine leaves gauges stale until the next one succeeds."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.query(expr)
            if has_data(response) or response.get("status") != "success" or time.monotonic() > deadline:
                return response
            time.sleep(0.5)

    def value(self, expr: str) -> float:
        """The one value of a scalar-like query (`sum(...)`); NaN when it returns nothing."""
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else math.nan

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def has_data(response: dict[str, Any]) -> bool:
    """A successful instant query with at least one series whose value is a number (not NaN: a
    histogram quantile without observations in its window)."""
    if response.get("status") != "success":
        return False
    result = response["data"]["result"]
    samples = [result] if response["data"]["resultType"] == "scalar" else [s["value"] for s in result]
    return any(not math.isnan(float(value)) for _, value in samples)


def describe(response: dict[str, Any]) -> str:
    if response.get("status") != "success":
        return f"{response.get('errorType')}: {response.get('error')}"
    return f"result {json.dumps(response['data']['result'])[:300]}"


def requests_recorded() -> float:
    """Requests the server has counted in seqcast_request_duration_seconds, all labels together."""
    return sum(sample.value for family in REGISTRY.collect() if family.name == "seqcast_request_duration_seconds"
               for sample in family.samples if sample.name.endswith("_count"))


def tourism_series() -> list[list[float]]:
    with TOURISM.open() as f:
        rows = list(csv.reader(f))[1:]
    return [[float(row[column]) for row in rows] for column in range(1, len(rows[0]))]


def traffic(client: SeqcastClient) -> int:
    """One wave of concurrent calls of every kind, some failing; returns how many calls it made."""
    series = tourism_series()

    def fails(call: Callable[[], object]) -> None:
        with pytest.raises(SeqcastError):
            call()

    calls: list[Callable[[], object]] = [
        *(lambda i=i: client.translate(TEXTS[i:i + 3], max_new_tokens=24) for i in range(0, 6)),
        *(lambda text=text: list(client.translate_stream(text, max_new_tokens=24)) for text in TEXTS[:3]),
        *(lambda i=i: client.forecast(series[i:], horizon=8) for i in range(3)),
        lambda: fails(lambda: client.translate(TEXTS[0], model="no-such-model")),  # NOT_FOUND
        lambda: fails(lambda: client.translate("")),  # INVALID_ARGUMENT
    ]
    with ThreadPoolExecutor(len(calls)) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result(timeout=60)
    return len(calls)


def scraped_wave(prometheus: Prometheus, client: SeqcastClient) -> None:
    """Sends a wave of traffic and waits until Prometheus has scraped all of it."""
    before = requests_recorded()
    calls = traffic(client)
    # A stream's request is counted when its handler returns, just after the client has read it.
    wait_for(lambda: requests_recorded() >= before + calls, 30, "the server to count every request")
    total = requests_recorded()
    wait_for(lambda: prometheus.value("sum(seqcast_request_duration_seconds_count)") >= total, 60,
             "Prometheus to scrape the wave of traffic")


@dataclass
class Live:
    prometheus: Prometheus
    rules: bool  # whether Prometheus loaded rules extracted from the PrometheusRule


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The server with the bundled models and a Prometheus scraping it, after two waves of traffic
    a scrape or more apart: every histogram series then grows within the rate window (Prometheus
    sees a series first with its first observations already in it, and a rate needs an increase)."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (bash scripts/install-deploy-tools.sh .venv puts it in .tools/bin)")
    directory = tmp_path_factory.mktemp("prometheus")
    rules = directory / "rules.yaml" if rule_groups() else None
    if rules:
        rules.write_text(yaml.safe_dump({"groups": rule_groups()}))
    server = start_server(REPO / "models", default_model="en-de", default_forecast_model="tourism")
    prometheus = Prometheus.start(directory, server.running.metrics.port, rules)
    try:
        wait_for(prometheus.ready, 60, "Prometheus to be ready")
        wait_for(lambda: prometheus.value("count(seqcast_model_info)") > 0, 60, "the first scrape")
        with SeqcastClient(server.target) as client:
            scraped_wave(prometheus, client)
            scraped_wave(prometheus, client)
        yield Live(prometheus, rules is not None)
    finally:
        prometheus.stop()
        server.stop()


def test_every_dashboard_query_returns_data_from_the_live_server(live: Live) -> None:
    failures = []
    for where, expr in dashboard_queries():
        response = live.prometheus.query_data(as_promql(expr))
        if not has_data(response):
            failures.append(f"panel {where}: {as_promql(expr)}\n    -> {describe(response)}")
    assert not failures, "dashboard queries without data:\n" + "\n".join(failures)


def test_every_alert_parses_and_its_signal_returns_data(live: Live) -> None:
    if not live.rules:
        pytest.skip(f"no PrometheusRule in {PROMETHEUS_RULE.relative_to(REPO)}")
    failures = []
    for rule in alert_rules():
        expr, name = rule["expr"], rule["alert"]
        response = live.prometheus.query(expr)
        if response.get("status") != "success":
            failures.append(f"alert {name}: {expr}\n    -> {describe(response)}")
            continue
        split = split_threshold(expr)
        if split is None:
            failures.append(f"alert {name}: does not end in a comparison with a number: {expr}")
            continue
        signal, _ = split
        response = live.prometheus.query_data(signal)
        if not has_data(response):
            failures.append(f"alert {name}: the signal {signal}\n    -> {describe(response)}")
    assert not failures, "alert rules failing against the live server:\n" + "\n".join(failures)


def test_prometheus_evaluates_every_rule_without_error(live: Live) -> None:
    if not live.rules:
        pytest.skip(f"no PrometheusRule in {PROMETHEUS_RULE.relative_to(REPO)}")

    def loaded() -> dict[tuple[str, str], dict[str, Any]]:
        return {(group["name"], rule["name"]): rule
                for group in live.prometheus.api("rules")["data"]["groups"] for rule in group["rules"]}

    expected = {(group["name"], rule.get("alert") or rule["record"])
                for group in rule_groups() for rule in group["rules"]}
    before = loaded()
    assert set(before) == expected

    # Evaluations after the traffic was scraped: errors such as many-to-many matches only show
    # once there are series.
    def evaluated_again() -> dict[tuple[str, str], dict[str, Any]] | None:
        now = loaded()
        return now if all(now[k]["lastEvaluation"] != before[k]["lastEvaluation"] for k in expected) else None

    after = wait_for(evaluated_again, 60, "every rule to be evaluated again")
    failing = {f"{group}/{name}": rule.get("lastError")
               for (group, name), rule in after.items() if rule["health"] != "ok"}
    assert not failing, f"rules evaluated with errors: {failing}"


def test_every_adapter_rule_returns_data_for_the_job(live: Live) -> None:
    rules = adapter_rules()
    if not rules:
        pytest.skip("no prometheus-adapter rules (seriesQuery/metricsQuery) under deploy/")
    failures = []
    for path, rule in rules:
        response = live.prometheus.query_data(adapter_promql(rule))
        if not has_data(response):
            failures.append(f"{path}: {rule['seriesQuery']!r}: {adapter_promql(rule)}\n    -> {describe(response)}")
    assert not failures, "adapter rules without data:\n" + "\n".join(failures)
