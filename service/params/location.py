"""Where in the catalogue: the ``{storm}`` path parameter and ``lon,lat`` coordinates."""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Path

from iou_maps.compute.engine import MetricEngine
from iou_maps.storms.catalog import STORM_NAME_RE, Storm

#: Storm names as the catalog accepts them (the schema states the rule; the catalog checks it
#: with a message naming the storm, before any disk access).
STORM_NAME_PATTERN = f"^{STORM_NAME_RE.pattern}$"
#: Web-Mercator latitude limit.
MAX_LATITUDE = 85.06

Longitude = Annotated[
    float,
    Path(ge=-180, le=180, allow_inf_nan=False, description="Longitude (EPSG:4326)."),
]
Latitude = Annotated[
    float,
    Path(
        ge=-MAX_LATITUDE,
        le=MAX_LATITUDE,
        allow_inf_nan=False,
        description="Latitude (EPSG:4326, within Web Mercator's range).",
    ),
]


def storm_dependency(engine: MetricEngine) -> Callable[..., Awaitable[Storm]]:
    """A path dependency resolving ``{storm}`` to the engine's cached Storm (no ``url=``).

    The name is validated before any disk access (InvalidStormName → 422, unknown → 404).
    """

    async def StormPathParams(
        storm: Annotated[
            str,
            Path(
                description="Storm name: 1-64 characters of a-z, 0-9, '_' and '-'.",
                json_schema_extra={"pattern": STORM_NAME_PATTERN},
            ),
        ],
    ) -> Storm:
        return engine.storm(storm).storm

    return StormPathParams
