"""Configuration from environment variables (pydantic-settings), shared by the CLI and service."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from iou_maps.storms.grid import DEFAULT_ANALYSIS_ZOOM


class Settings(BaseSettings):
    """Every knob of IoU Maps; each is an environment variable (``IOU_MAPS_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="IOU_MAPS_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Storms, models and embedded Redis.")
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "IOU_MAPS_REDIS_URL"),
        description="Redis server URL; unset: an embedded Redis under the data directory.",
    )
    model: str = Field(default="demo", description="Model name under <data_dir>/models.")
    analysis_zoom: int = Field(default=DEFAULT_ANALYSIS_ZOOM, ge=10, le=22)
    compute_budget: int = Field(
        default=64, ge=0, description="Most analysis tiles one request may compute."
    )
    cors_origins: list[str] = Field(default=["*"], description="Allowed CORS origins.")
    dask_scheduler: str | None = Field(
        default=None,
        description="Dask scheduler address (tcp://host:8786) on which `precompute` runs.",
    )
    inference_processes: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Worker processes in which the service runs the model (0: in the API "
        "process itself).",
    )
    compute_queue: int = Field(
        default=256,
        ge=0,
        description="Most analysis tiles an API process lets wait for the model at once; "
        "over it a request gets what is cached now.",
    )
    http_max_age: int = Field(
        default=86400,
        ge=0,
        description="Cache-Control max-age (seconds) of complete tiles: how long browsers and "
        "CDNs may serve a tile without asking again (then they revalidate with its ETag).",
    )
    http_metadata_max_age: int = Field(
        default=300,
        ge=0,
        description="Cache-Control max-age (seconds) of TileJSON and WMTS capabilities.",
    )
    http_immutable: bool = Field(
        default=False,
        description="Mark complete tiles `immutable` (no revalidation within max-age, even on "
        "reload): for storms that are never re-ingested in place.",
    )
    tile_cache_url: str | None = Field(
        default=None,
        description="Redis server of the imagery tile cache, separate from REDIS_URL's so that "
        "imagery can never evict a metric value; 'embedded': a private embedded one under the "
        "data directory; 'off': none; unset: embedded when REDIS_URL is unset, else off.",
    )
    tile_cache_memory: str = Field(
        default="256mb",
        pattern=r"^[0-9]+(?:[kKmMgG][bB]?)?$",
        description="maxmemory of the embedded tile cache (a Redis server's own limit).",
    )
    tile_cache_below: int = Field(
        default=2,
        ge=0,
        le=24,
        description="Imagery tiles at least this many zooms below the storm's native zoom "
        "(where a tile mosaics many scenes' overviews) are kept in the tile cache.",
    )
    precision: Literal["float32", "bfloat16", "auto"] = Field(
        default="auto",
        description="Float precision of the regressor's network, among those it was prepared "
        "in (`train-regressor --precisions`): auto: bfloat16 on a processor with bfloat16 units "
        "(AMX, AVX512-BF16), else float32.",
    )
    host: str = Field(default="127.0.0.1")
    port: int = Field(default=8000, ge=1, le=65535)

    @property
    def storms_dir(self) -> Path:
        """Where the storms live."""
        return self.data_dir / "storms"

    @property
    def models_dir(self) -> Path:
        """Where the models live."""
        return self.data_dir / "models"
