"""``/healthz``: Redis reachability, the model id and the model-call counters."""

from attrs import define, field
from titiler.core.factory import BaseFactory

from iou_maps.compute.engine import MetricEngine
from service.admission import ComputeQueue
from service.models import Health


@define(kw_only=True)
class HealthFactory(BaseFactory):
    """``/healthz``: always 200; ``degraded`` while Redis is unreachable."""

    engine: MetricEngine
    queue: ComputeQueue = field(factory=lambda: ComputeQueue(256))

    def register_routes(self) -> None:
        """The health route."""

        @self.router.get(
            "/healthz",
            summary="Service health",
            response_model=Health,
            operation_id=f"{self.operation_prefix}getHealth",
        )
        def healthz() -> Health:
            """Redis reachability, the model id and the model-call counters (this process's,
            and every process's from Redis)."""
            cache = self.engine.cache
            redis_ok = cache is not None and cache.ping()
            totals = cache.counters() if cache is not None and redis_ok else None
            return Health(
                status="ok" if redis_ok else "degraded",
                redis=redis_ok,
                model_id=self.engine.model_id,
                model_calls=self.engine.model_calls,
                tiles_computed=self.engine.tiles_computed,
                model_calls_all=totals["model_calls"] if totals else None,
                tiles_computed_all=totals["tiles_computed"] if totals else None,
                compute_queued=self.queue.queued,
            )
