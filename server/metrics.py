"""Prometheus metrics: every seqcast metric, defined once here, and the /metrics HTTP endpoint.

Built on `prometheus_client` and its default registry (which also carries the client's process
and Python collectors). The server records through the typed helpers below: request edges by
name (`observe_request`), a model's scheduler through its `DecodeMetrics`, which looks its series
up once; no other module holds metric objects. Names follow Prometheus conventions: prefix
`seqcast_`, base units (seconds), counters end in `_total`. Every series carries a `model` label; `forget_model` removes a model's
series when it is unloaded. docs/metrics.md lists them with example queries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Latency buckets in seconds, 1-2.5-5 steps from 50 us to 60 s: one set has to resolve
# sub-millisecond decoder steps on a GPU and multi-second requests on a CPU. Round bounds keep
# `le` labels readable in queries and alerts; at most 2.5x apart, so quantiles interpolated
# within one bucket stay within that factor.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# Rows in one decoder step: powers of two up to 512 (above max_batch_rows' default of 256).
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUEST_DURATION = Histogram(
    "seqcast_request_duration_seconds",
    "End-to-end server time of a request, by method (gRPC method or HTTP endpoint) and status code.",
    ["model", "method", "code"], buckets=LATENCY_BUCKETS,
)
QUEUE_DURATION = Histogram(
    "seqcast_queue_duration_seconds",
    "Time from admission until the request's rows join the decode batch.",
    ["model"], buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "seqcast_time_to_first_token_seconds",
    "Time from admission to the request's first token (for forecasts: its first forecast step).",
    ["model"], buckets=LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "seqcast_inter_token_latency_seconds",
    "Time between consecutive tokens (forecast steps) of one request.",
    ["model"], buckets=LATENCY_BUCKETS,
)
ENCODER_DURATION = Histogram(
    "seqcast_encoder_duration_seconds",
    "Duration of one encoder call.",
    ["model"], buckets=LATENCY_BUCKETS,
)
DECODER_STEP_DURATION = Histogram(
    "seqcast_decoder_step_duration_seconds",
    "Duration of one decoder step over the whole decode batch.",
    ["model"], buckets=LATENCY_BUCKETS,
)
DECODE_BATCH_ROWS = Histogram(
    "seqcast_decode_batch_rows",
    "Rows (sequences or series) in one decoder step.",
    ["model"], buckets=ROW_BUCKETS,
)
INPUT_TOKENS = Counter(
    "seqcast_input_tokens_total",
    "Tokens read by the encoder (for forecasts: context values read, summed over series).",
    ["model"],
)
OUTPUT_TOKENS = Counter(
    "seqcast_output_tokens_total",
    "Tokens generated (for forecasts: forecast steps generated, one per series per step).",
    ["model"],
)
INFLIGHT_REQUESTS = Gauge(
    "seqcast_inflight_requests",
    "Requests whose rows are in the decode batch.",
    ["model"],
)
QUEUE_REQUESTS = Gauge(
    "seqcast_queue_requests",
    "Admitted requests waiting to join the decode batch.",
    ["model"],
)
MODEL_INFO = Gauge(
    "seqcast_model_info",
    "Loaded model (always 1): bundle version, task, architecture and ONNX Runtime execution provider.",
    ["model", "version", "task", "architecture", "execution_provider"],
)

# Every metric with the label names it was defined with (in order, as `.remove` needs them).
_ALL: tuple[tuple[Histogram | Counter | Gauge, tuple[str, ...]], ...] = (
    (REQUEST_DURATION, ("model", "method", "code")),
    *((m, ("model",)) for m in (QUEUE_DURATION, TIME_TO_FIRST_TOKEN, INTER_TOKEN_LATENCY, ENCODER_DURATION,
                                DECODER_STEP_DURATION, DECODE_BATCH_ROWS, INPUT_TOKENS, OUTPUT_TOKENS,
                                INFLIGHT_REQUESTS, QUEUE_REQUESTS)),
    (MODEL_INFO, ("model", "version", "task", "architecture", "execution_provider")),
)


def observe_request(model: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
    """One finished request: `method` is the RPC name ("Translate", "ModelInfer") or the HTTP
    endpoint ("http.translate"), `code` its status (over HTTP: the status the same error gets over gRPC)."""
    REQUEST_DURATION.labels(model, method, code.name).observe(seconds)


# Counts forget_model calls: a DecodeMetrics whose model's series were removed since it looked
# them up (another server in the process unloaded a model of the same name) looks them up again.
_forgotten = 0


# Per model, each live scheduler's (queued, in flight), keyed by its DecodeMetrics' id.
_request_counts: dict[str, dict[int, tuple[int, int]]] = {}
_counts_lock = threading.Lock()


class DecodeMetrics:
    """One model's decoding series, looked up once; the scheduler records through it.

    A label lookup costs about as much as the observation itself, and every decoder step records
    several (its duration and rows, each row's inter-token gap, the tokens, the request gauges),
    so the scheduler holds one of these rather than naming the model at every call.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._bind()

    def _fresh(self) -> None:
        if self._generation != _forgotten:  # forget_model removed series since: look them up again
            self._bind()

    def _bind(self) -> None:
        model = self.model
        self._generation = _forgotten
        self._queue = QUEUE_DURATION.labels(model)
        self._encoder = ENCODER_DURATION.labels(model)
        self._input = INPUT_TOKENS.labels(model)
        self._step = DECODER_STEP_DURATION.labels(model)
        self._rows = DECODE_BATCH_ROWS.labels(model)
        self._first = TIME_TO_FIRST_TOKEN.labels(model)
        self._gap = INTER_TOKEN_LATENCY.labels(model)
        self._output = OUTPUT_TOKENS.labels(model)
        self._queued = QUEUE_REQUESTS.labels(model)
        self._inflight = INFLIGHT_REQUESTS.labels(model)

    def joined(self, encoder_seconds: float, input_tokens: int, queue_waits: Iterable[float]) -> None:
        """Arrivals joined the batch: their encoder call, the tokens it read, each one's wait."""
        self._fresh()
        self._encoder.observe(encoder_seconds)
        self._input.inc(input_tokens)
        for seconds in queue_waits:
            self._queue.observe(seconds)

    def step(self, rows: int, seconds: float) -> None:
        """One decoder step over `rows` rows."""
        self._fresh()
        self._step.observe(seconds)
        self._rows.observe(rows)

    def delivered(self, tokens: int, first_tokens: Iterable[float], gaps: Iterable[float]) -> None:
        """A step's deliveries: tokens (forecast steps) produced, times to first token, inter-token gaps."""
        self._fresh()
        if tokens:
            self._output.inc(tokens)
        for seconds in first_tokens:
            self._first.observe(seconds)
        for seconds in gaps:
            self._gap.observe(seconds)

    def requests(self, queued: int, inflight: int) -> None:
        """The scheduler's own counts, mirrored (set, not inc/dec, so a failed path cannot drift
        them); the caller holds the lock that guards them, so the last write is the latest count.

        While a reload drains the old version, two schedulers serve one model name: the gauges
        show the sum of every live scheduler's counts for it."""
        self._fresh()
        with _counts_lock:
            counts = _request_counts.setdefault(self.model, {})
            counts[id(self)] = (queued, inflight)
            self._queued.set(sum(q for q, _ in counts.values()))
            self._inflight.set(sum(i for _, i in counts.values()))

    def close(self) -> None:
        """The scheduler stopped: its counts (zero by then) leave the model's sums."""
        with _counts_lock:
            _request_counts.get(self.model, {}).pop(id(self), None)


_SERIES_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}


def series_names() -> set[str]:
    """The series names `/metrics` carries and queries select: a histogram's _bucket, _sum and
    _count, a counter's _total, a gauge's own name."""
    return {family.name + suffix for metric, _ in _ALL for family in metric.describe()
            for suffix in _SERIES_SUFFIXES[family.type]}


def set_model_info(model: str, version: str, task: str, architecture: str, provider: str) -> None:
    """Marks `model` loaded; replaces its previous info series (a reload may change any label)."""
    _remove(MODEL_INFO, ("model", "version", "task", "architecture", "execution_provider"), model)
    MODEL_INFO.labels(model, version, task, architecture, provider).set(1)


def forget_model(model: str) -> None:
    """Removes every series labelled with `model`, so an unloaded model stops being exported."""
    global _forgotten
    for metric, labelnames in _ALL:
        _remove(metric, labelnames, model)
    with _counts_lock:
        _request_counts.pop(model, None)
    _forgotten += 1


def _remove(metric: Histogram | Counter | Gauge, labelnames: tuple[str, ...], model: str) -> None:
    # The label sets in use are read from collect() (public API) rather than the client's private
    # children dict; histogram samples also carry `le`, which labelnames leaves out.
    series = {
        tuple(sample.labels[n] for n in labelnames)
        for family in metric.collect()
        for sample in family.samples
        if sample.labels.get("model") == model
    }
    for labelvalues in series:
        metric.remove(*labelvalues)


@dataclass
class MetricsServer:
    """The /metrics HTTP endpoint, answered from a daemon thread."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.httpd.server_port

    def stop(self) -> None:
        self.httpd.shutdown()  # ends serve_forever
        self.httpd.server_close()  # frees the port
        self.thread.join()


def start_metrics_server(host: str, port: int) -> MetricsServer:
    """Serves the default registry at http://host:port/metrics; port 0 picks a free port."""
    httpd, thread = start_http_server(port, addr=host)
    return MetricsServer(httpd, thread)
