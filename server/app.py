"""Assembling the gRPC server: servicers, per-model health, reflection; and running it.

`create_server` is what tests use: it binds (port 0 picks a free port) and returns the started
server with its port. `serve` is the long-running front end: load bundles, start, log where it
listens, and on SIGTERM/SIGINT turn health NOT_SERVING and stop after a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from seqcast.server import metrics
from seqcast.server.metrics import MetricsServer
from seqcast.server.models import ModelRegistry
from seqcast.server.runtime import RuntimeOptions
from seqcast.server.scheduler import SchedulerLimits
from seqcast.server.service import ForecastingServicer, ModelsServicer, TranslationServicer
from seqcast.server.settings import ServerSettings
from seqcast.v1 import seqcast_pb2 as pb
from seqcast.v1 import seqcast_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

GRACE_SECONDS = 10.0


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    registry: ModelRegistry
    health: health.aio.HealthServicer
    metrics: MetricsServer | None = None

    async def set_health(self, status: int) -> None:
        """Health of the whole server (""), of every model by name, and of every service."""
        for service in ["", *self.registry.models, *_SERVICES]:
            await self.health.set(service, status)

    async def stop(self, grace: float | None = GRACE_SECONDS) -> None:
        """Health NOT_SERVING, no new calls, running calls finish within `grace`, then models close."""
        await self.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)
        await asyncio.get_running_loop().run_in_executor(None, self.registry.close)
        for model in self.registry.models:
            metrics.forget_model(model)
        if self.metrics is not None:
            self.metrics.stop()


_SERVICES = [pb.DESCRIPTOR.services_by_name[n].full_name for n in ("Translation", "Forecasting", "Models")]


def scheduler_limits(settings: ServerSettings) -> SchedulerLimits:
    return SchedulerLimits(
        max_queued_requests=settings.max_queued_requests,
        max_batch_rows=settings.max_batch_rows,
        max_state_bytes=settings.max_state_mb * 1024 * 1024,
        batching=settings.batching,
    )


def runtime_options(settings: ServerSettings) -> RuntimeOptions:
    return RuntimeOptions(device=settings.device, intra_op_threads=settings.intra_op_threads, allow_spinning=settings.allow_spinning)


async def create_server(settings: ServerSettings, registry: ModelRegistry | None = None) -> RunningServer:
    """Loads the bundles (unless a registry is given), binds, starts; returns the running server."""
    registry = registry or ModelRegistry.load(
        settings.model_dir, runtime_options(settings), settings.default_model, settings.default_forecast_model,
        scheduler_limits(settings),
    )
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    )
    pb_grpc.add_TranslationServicer_to_server(TranslationServicer(registry, settings), server)
    pb_grpc.add_ForecastingServicer_to_server(ForecastingServicer(registry, settings), server)
    pb_grpc.add_ModelsServicer_to_server(ModelsServicer(registry), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    for name, model in registry.models.items():
        m = model.manifest
        metrics.set_model_info(name, m.version, m.task, m.architecture, model.runtime.provider)
    exporter = None
    if settings.metrics_port is not None:
        exporter = metrics.start_metrics_server(settings.metrics_host, settings.metrics_port)
    running = RunningServer(server, port, registry, health_servicer, exporter)
    await running.set_health(health_pb2.HealthCheckResponse.SERVING)
    return running


async def serve(settings: ServerSettings) -> None:
    running = await create_server(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    address = f"{settings.host}:{running.port}"
    log.info("serving %s on %s", ", ".join(f"{n} ({m.runtime.provider})" for n, m in running.registry.models.items()) or "no models", address)
    print(f"seqcast listening on {address}", flush=True)
    if running.metrics is not None:
        print(f"  metrics: http://{settings.metrics_host}:{running.metrics.port}/metrics", flush=True)
    print(f"  try: seqcast-client --target {address} translate \"Save changes\"", flush=True)
    await stopping.wait()
    log.info("stopping: health NOT_SERVING, finishing in-flight requests (grace %.0fs)", GRACE_SECONDS)
    await running.stop(GRACE_SECONDS)
