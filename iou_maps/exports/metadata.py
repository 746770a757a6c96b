"""What an export says about itself: the archives' TileJSON-like metadata of a layer, and
the generator every export names (how the STAC catalogue recognises its files)."""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import mercantile

from iou_maps.compute.engine import MetricEngine
from iou_maps.exports.maps import ImageryMap, MetricMap
from iou_maps.layers.registry import Source
from iou_maps.layers.render import legend_stops

__all__ = ["GENERATOR", "ArchiveMetadata", "imagery_metadata", "metric_metadata"]


def _generator() -> str:
    try:
        return f"iou-maps {importlib.metadata.version('iou-maps')}"
    except importlib.metadata.PackageNotFoundError:
        return "iou-maps"


#: Written into every export's metadata.
GENERATOR = _generator()


@dataclass
class ArchiveMetadata:
    """What an archive says about itself (TileJSON-like keys, as PMTiles and MBTiles use)."""

    name: str
    description: str
    attribution: str
    tile_format: str  # png | webp | jpeg
    bounds: tuple[float, float, float, float]
    minzoom: int
    maxzoom: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def center(self) -> tuple[float, float, int]:
        """Longitude, latitude and zoom of a good first view (the bounds' centre)."""
        w, s, e, n = self.bounds
        return (w + e) / 2, (s + n) / 2, self.minzoom

    def tile_bounds(self, zoom: int) -> tuple[float, float, float, float]:
        """``bounds`` grown to the edges of ``zoom``'s tiles. GDAL takes an MBTiles' bounds
        as its raster's extent: on that grid it reads the tiles' pixels as they are, at that
        zoom and at each zoom out (its overviews), instead of resampling them by a fraction
        of a pixel."""
        w, s, e, n = self.bounds
        west = mercantile.bounds(mercantile.tile(w, n, zoom))
        east = mercantile.bounds(mercantile.tile(e, s, zoom))
        return west.west, east.south, east.east, west.north

    def as_json(self) -> dict[str, Any]:
        """PMTiles' metadata JSON."""
        return {
            "name": self.name,
            "description": self.description,
            "attribution": self.attribution,
            "type": "overlay",
            "format": self.tile_format,
            "version": "1",
            "bounds": list(self.bounds),
            "center": list(self.center),
            "minzoom": self.minzoom,
            "maxzoom": self.maxzoom,
            **self.extra,
        }

    def as_mbtiles(self) -> dict[str, str]:
        """MBTiles' metadata rows: the spec's text forms, other keys as JSON text."""
        out = {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in self.as_json().items()
            if k not in ("bounds", "center")
        }
        out["bounds"] = ",".join(repr(v) for v in self.tile_bounds(self.maxzoom))
        out["center"] = "{:.7f},{:.7f},{}".format(*self.center)
        return out


def metric_metadata(
    engine: MetricEngine,
    layer: MetricMap,
    fmt: str,
    zooms: tuple[int, int],
    attribution: str | None,
) -> ArchiveMetadata:
    """The archive metadata of a metric layer: its legend, model and where it came from."""
    storm = engine.storm(layer.storm).storm
    what = {"predicted": "Predicted", "true": "True", "error": "Error of the predicted"}
    model_id = engine.sources.source_id(Source(layer.source))
    return ArchiveMetadata(
        name=layer.title,
        description=(
            f"{what[layer.source]} {layer.metric} of the segmentation model on storm "
            f"{layer.storm!r}, one value per {engine.analysis_zoom}-zoom analysis tile "
            f"(model {model_id})"
        ),
        attribution=attribution or f"IoU Maps, model {model_id}",
        tile_format=fmt,
        bounds=storm.bounds,
        minzoom=zooms[0],
        maxzoom=zooms[1],
        extra={
            "storm": layer.storm,
            "layer": "metric",
            "metric": layer.metric,
            "classes": list(engine.classes.names),
            "source": layer.source,
            "model_id": model_id,
            "analysis_zoom": engine.analysis_zoom,
            "colormap_name": layer.colormap_name,
            "rescale": list(layer.value_range),
            "legend_stops": legend_stops(layer.colormap, *layer.value_range),
            "generator": GENERATOR,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def imagery_metadata(
    engine: MetricEngine,
    layer: ImageryMap,
    fmt: str,
    zooms: tuple[int, int],
    attribution: str | None,
) -> ArchiveMetadata:
    """The archive metadata of a storm's imagery: its scenes and their dates."""
    storm_name = layer.storm
    storm = engine.storm(storm_name).storm
    dates = sorted(d for d in storm.footprints["datetime"].dropna().astype(str) if d)
    return ArchiveMetadata(
        name=layer.title,
        description=f"Aerial imagery of storm {storm_name!r} ({len(storm.footprints)} scenes)",
        attribution=attribution or "IoU Maps",
        tile_format=fmt,
        bounds=storm.bounds,
        minzoom=zooms[0],
        maxzoom=zooms[1],
        extra={
            "storm": storm_name,
            "layer": "imagery",
            "scenes": len(storm.footprints),
            "start_datetime": dates[0] if dates else None,
            "end_datetime": dates[-1] if dates else None,
            "generator": GENERATOR,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
