"""The metric layer a request names: the metric, the source of its values, and the compute
budget of the request."""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Path, Query

from iou_maps.layers.registry import Source
from iou_maps.models.classes import ClassSet


def metric_dependency(classes: ClassSet) -> Callable[..., Awaitable[str]]:
    """The metric layer named in the path, one of the model's (``classes``): a 404 naming the
    valid ones otherwise (``MetricNotInModel``)."""

    async def MetricParams(
        metric: Annotated[
            str,
            Path(description=f"One of this model's metrics: {', '.join(classes.metrics)}."),
        ],
    ) -> str:
        classes.metric_index(metric)
        return metric

    return MetricParams


async def SourceParams(
    source: Annotated[
        Source,
        Query(
            description=(
                "Where the values come from: predicted (the regressor, everywhere), true (the "
                "segmentation model against the storm's labels, where labelled) or error "
                "(predicted − true; its lower-zoom aggregates are the mean absolute error). "
                "true and error answer 404 for a storm without labels."
            )
        ),
    ] = Source.predicted,
) -> Source:
    """The source of a metric layer or point lookup (FastAPI answers 422 naming the valid
    ones)."""
    return Source(source)


def budget_dependency(cap: int) -> Callable[..., Awaitable[int]]:
    """The per-request compute budget: a query parameter capped by the settings."""

    async def BudgetParams(
        budget: Annotated[
            int | None,
            Query(
                ge=0,
                description=(
                    "Most analysis tiles this request may compute with the model "
                    f"(default and maximum: {cap}). Tiles over the budget are drawn "
                    "transparent and counted in the X-IoU-Missing header."
                ),
            ),
        ] = None,
    ) -> int:
        return cap if budget is None else min(budget, cap)

    return BudgetParams
