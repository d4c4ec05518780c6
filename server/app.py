"""Assembling the server: the native and KServe v2 gRPC servicers, per-model health,
reflection, the optional HTTP/JSON front end on the same event loop; and running it.

`create_server` is what tests use: it binds (port 0 picks a free port) and returns the started
server with its port. `serve` is the long-running front end: load bundles, start, log where it
listens, and on SIGTERM/SIGINT turn health NOT_SERVING and stop after `drain_seconds`. While it
runs, a task rescans `model_dir` every `model_poll_seconds` (`ModelRegistry.refresh`) and health
follows what serves (`seqcast.server.health`).

The API port speaks plaintext, TLS or mutual TLS (settings `tls_*`). An optional second,
plaintext listener (`health_port`) serves only grpc.health.v1, for probes that can't speak TLS.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from seqcast.bundle.runtime import RuntimeOptions
from seqcast.inference import grpc_service_pb2_grpc as inference_grpc
from seqcast.server import metrics, reflection
from seqcast.server.health import SERVICES, Health
from seqcast.server.http import HttpServer, start_http
from seqcast.server.kserve import InferenceServicer
from seqcast.server.malformed import MalformedRequests
from seqcast.server.metrics import MetricsServer
from seqcast.server.models import ModelRegistry
from seqcast.server.scheduler import SchedulerLimits
from seqcast.server.service import ForecastingServicer, ModelsServicer, TranslationServicer
from seqcast.server.settings import ServerSettings
from seqcast.v1 import seqcast_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    registry: ModelRegistry
    health: Health
    metrics: MetricsServer | None = None
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    inference: InferenceServicer | None = None  # KServe v2; its readiness follows health
    http: HttpServer | None = None
    # Rescans model_dir every `model_poll_seconds` (live model updates); None when off.
    watcher: asyncio.Task[None] | None = None

    @property
    def http_port(self) -> int | None:
        return None if self.http is None else self.http.port

    async def sync_health(self) -> None:
        """Health of the server, every service and every model, from what serves now."""
        await self.health.sync(self.registry)
        if self.inference is not None:
            self.inference.ready = self.health.serving

    async def refresh(self) -> None:
        """Rescans model_dir now: loads new versions, drains replaced and removed ones; health follows."""
        await self.registry.refresh()
        await self.sync_health()  # also when nothing changed: a new folder may have been refused

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # a bug: the models that serve keep serving, the next scan tries again
                log.exception("rescanning %s failed; trying again in %gs", self.registry.repository.model_dir, interval)

    async def stop(self, grace: float | None) -> None:
        """Health NOT_SERVING, no new calls, running calls finish within `grace`, then models close."""
        if self.watcher is not None:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
        await self.health.shutdown()
        if self.inference is not None:
            self.inference.ready = False
        if self.http is not None:
            await asyncio.gather(self.server.stop(grace), self.http.stop())
        else:
            await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(None)
        await asyncio.get_running_loop().run_in_executor(None, self.registry.close)
        for model in self.registry.models:
            metrics.forget_model(model)
        if self.metrics is not None:
            self.metrics.stop()


def runtime_options(settings: ServerSettings) -> RuntimeOptions:
    return RuntimeOptions(device=settings.device, intra_op_threads=settings.intra_op_threads, allow_spinning=settings.allow_spinning)


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    limit = settings.max_message_bytes
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    if settings.max_connection_age_seconds > 0:
        options += [("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(settings.drain_seconds * 1000))]
    return options


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files; None for plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


async def create_server(settings: ServerSettings, registry: ModelRegistry | None = None) -> RunningServer:
    """Reads the TLS files, loads the bundles (unless a registry is given), binds, starts; returns
    the running server. No bundle stops it from starting: refused ones are logged."""
    credentials = server_credentials(settings)  # before the models: a bad key fails in a second
    registry = registry or ModelRegistry.load(
        settings.model_dir, runtime_options(settings), settings.default_model, settings.default_forecast_model,
        SchedulerLimits.from_settings(settings),
    )
    malformed = MalformedRequests()
    server = grpc.aio.server(options=server_options(settings), interceptors=[malformed])
    pb_grpc.add_TranslationServicer_to_server(TranslationServicer(registry, settings), server)
    pb_grpc.add_ForecastingServicer_to_server(ForecastingServicer(registry, settings), server)
    pb_grpc.add_ModelsServicer_to_server(ModelsServicer(registry), server)
    inference = InferenceServicer(registry, settings)
    inference_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
    health_servicer = Health()
    await health_servicer.sync(registry)  # before the first probe can ask
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable([*SERVICES, health.SERVICE_NAME], server)
    address = f"{settings.host}:{settings.port}"
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    await server.start()
    health_server, health_port = None, None
    if settings.health_port is not None:
        health_server = grpc.aio.server(interceptors=[malformed])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = health_server.add_insecure_port(f"{settings.host}:{settings.health_port}")
        await health_server.start()
    exporter = None
    if settings.metrics_port is not None:
        exporter = metrics.start_metrics_server(settings.metrics_host, settings.metrics_port)
    http = await start_http(registry, settings) if settings.http_port is not None else None
    running = RunningServer(server, port, registry, health_servicer, exporter, health_server, health_port, inference, http)
    await running.sync_health()
    if settings.model_poll_seconds > 0:
        running.watcher = asyncio.create_task(running.watch(settings.model_poll_seconds))
    return running


async def serve(settings: ServerSettings) -> None:
    running = await create_server(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    address = f"{settings.host}:{running.port}"
    log.info("serving %s on %s", ", ".join(f"{n} ({m.runtime.provider})" for n, m in running.registry.models.items()) or "no models", address)
    tls = "" if settings.tls_cert_file is None else (" (mutual TLS)" if settings.tls_client_ca_file else " (TLS)")
    print(f"seqcast listening on {address}{tls}", flush=True)
    if running.health_port is not None:
        print(f"  health (plaintext): {settings.host}:{running.health_port}", flush=True)
    if running.http is not None:
        print(f"  HTTP/JSON: http://{settings.http_host}:{running.http.port}/translate", flush=True)
    if running.metrics is not None:
        print(f"  metrics: http://{settings.metrics_host}:{running.metrics.port}/metrics", flush=True)
    # The client beside this interpreter, by full path: the hint works in a new shell as written.
    client = Path(sys.executable).with_name("seqcast-client")
    hint = shlex.quote(str(client)) if client.exists() else "seqcast-client"
    print(f"  try: {hint} --target {address} translate \"Save changes\"", flush=True)
    await stopping.wait()
    log.info("stopping: health NOT_SERVING, finishing in-flight requests (up to %gs)", settings.drain_seconds)
    await running.stop(settings.drain_seconds)
