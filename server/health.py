"""Health that tells the truth: grpc.health.v1 statuses computed from the models that serve.

Builds on grpc_health's asyncio servicer (Check, Watch) and adds List, which
grpcio-health-checking 1.85 advertises but leaves unimplemented. `sync` recomputes every status
whenever the set of served models may have changed:
  * "" (the whole server) and `inference.GRPCInferenceService` (KServe v2, both tasks): SERVING
    while at least one model serves;
  * `seqcast.v1.Translation`, `seqcast.v1.Forecasting`: SERVING while a model of its task serves;
  * `seqcast.v1.Models`: SERVING while the server runs (it answers, with no models too);
  * each model by name (the folder name under model_dir): SERVING while a version of it serves,
    NOT_SERVING while every version is refused or after its folder is removed.
`shutdown` turns everything NOT_SERVING for good (SIGTERM drain).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2

from seqcast.inference import grpc_service_pb2 as inference_pb
from seqcast.server.models import ModelRegistry
from seqcast.v1 import seqcast_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

_TASK_SERVICES = {
    pb.DESCRIPTOR.services_by_name["Translation"].full_name: "translation",
    pb.DESCRIPTOR.services_by_name["Forecasting"].full_name: "forecast",
}
_MODELS_SERVICE = pb.DESCRIPTOR.services_by_name["Models"].full_name
_INFERENCE_SERVICE = inference_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Every API service, for reflection.
SERVICES = [*_TASK_SERVICES, _MODELS_SERVICE, _INFERENCE_SERVICE]


def statuses(registry: ModelRegistry) -> dict[str, int]:
    """The status of the server, of every service and of every model the registry knows."""
    tasks = {m.manifest.task for m in registry.models.values()}
    any_model = SERVING if registry.models else NOT_SERVING
    result = {"": any_model, _INFERENCE_SERVICE: any_model, _MODELS_SERVICE: SERVING}
    result |= {service: SERVING if task in tasks else NOT_SERVING for service, task in _TASK_SERVICES.items()}
    result |= {name: SERVING if name in registry.models else NOT_SERVING for name in registry.known | set(registry.models)}
    return result


class Health(health.aio.HealthServicer):
    """grpc.health.v1 with List; statuses follow the registry (`sync`) until `shutdown`."""

    def __init__(self) -> None:
        super().__init__()  # which says SERVING for "" until the first `sync`
        self.statuses: dict[str, int] = {}

    async def sync(self, registry: ModelRegistry) -> None:
        """Every status from what serves now; names seen before and gone now turn NOT_SERVING."""
        now = statuses(registry)
        for service in self.statuses.keys() - now.keys():
            now[service] = NOT_SERVING
        for service, status in now.items():
            if self.statuses.get(service) != status:
                await self.set(service, status)
        self.statuses = now

    async def shutdown(self) -> None:
        """NOT_SERVING for everything, for good: later `sync`s change nothing."""
        self.statuses = dict.fromkeys(self.statuses, NOT_SERVING)
        await self.enter_graceful_shutdown()

    @property
    def serving(self) -> bool:
        return self.statuses.get("") == SERVING

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in self.statuses.items()}
        )
