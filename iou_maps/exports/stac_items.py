"""The STAC Items of a storm: one per scene (its COG and labels), one per exported map (its
files as assets, recognised by the metadata ``iou-maps export`` writes into each)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
import rasterio
import shapely
from pystac.extensions.projection import SCHEMA_URI as PROJECTION_SCHEMA
from pystac.extensions.raster import SCHEMA_URI as RASTER_SCHEMA
from rio_stac.stac import create_stac_item, get_projection_info, get_raster_info

from iou_maps.exports.formats import FORMATS, format_of_file
from iou_maps.storms.catalog import Storm

__all__ = [
    "ExportFile",
    "export_item",
    "find_exports",
    "read_export",
    "scene_datetimes",
    "scene_item",
]

#: Custom fields are namespaced, as STAC asks of fields outside an extension.
NS = "iou_maps"


@dataclass
class ExportFile:
    """An export written by ``iou-maps export`` and what its metadata says."""

    path: Path
    format: str  # pmtiles | mbtiles | cog
    storm: str
    layer: str  # metric | imagery
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """The Item it belongs to: one per map (a metric from a source and a model)."""
        if self.layer == "imagery":
            return f"{self.storm}-imagery"
        m = self.metadata
        return f"{self.storm}-{m['metric']}-{m['source']}-{m['model_id']}"


def read_export(path: Path) -> ExportFile | None:
    """The export at ``path``, or None if it is not a file ``iou-maps export`` wrote."""
    fmt = format_of_file(path)
    if fmt is None or not path.is_file():
        return None
    try:
        meta = fmt.read_metadata(path)
    except Exception:  # not an archive or raster we can read: not an export of ours
        return None
    if not str(meta.get("generator", "")).startswith("iou-maps") or "storm" not in meta:
        return None
    return ExportFile(path, fmt.name, str(meta["storm"]), str(meta.get("layer", "metric")), meta)


def find_exports(storm: str, paths: Sequence[Path]) -> list[ExportFile]:
    """The exports of ``storm`` among ``paths`` (files, or folders searched one level)."""
    found = []
    for p in paths:
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            export = read_export(f)
            if export is not None and export.storm == storm:
                found.append(export)
    return found


def scene_datetimes(storm: Storm) -> list[datetime]:
    """The known datetimes of the storm's scenes, in order (naive ones taken as UTC)."""
    out = []
    for value in storm.footprints["datetime"]:
        if isinstance(value, str) and value:
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                continue
            out.append(when if when.tzinfo else when.replace(tzinfo=UTC))
    return sorted(out)


def scene_item(storm: Storm, row: Any) -> pystac.Item:
    """The Item of one scene: its valid-data footprint, its datetime and its COG (and label
    raster) as assets, with the projection read from the file by rio-stac."""
    when = None
    if isinstance(row.datetime, str) and row.datetime:
        when = datetime.fromisoformat(row.datetime)
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    item = create_stac_item(
        row.path,
        input_datetime=when,
        id=f"{storm.name}-{row.scene_id}",
        collection=storm.name,
        with_proj=True,
        asset_name="image",
        asset_roles=["data"],
        asset_media_type=pystac.MediaType.COG,
        asset_href=str(Path(row.path).resolve()),
        properties={"gsd": float(row.gsd)} if row.gsd == row.gsd else {},
    )
    if when is None:  # rio-stac falls back to now: say it is unknown instead
        item.properties[f"{NS}:datetime_unknown"] = True
    item.geometry = shapely.geometry.mapping(row.geometry)
    item.bbox = [float(v) for v in row.geometry.bounds]
    item.assets["image"].title = f"Scene {row.scene_id} (RGB, Cloud-Optimized GeoTIFF)"
    if isinstance(row.label_path, str) and row.label_path:
        item.add_asset(
            "labels",
            pystac.Asset(
                str(Path(row.label_path).resolve()),
                title="Class labels (0 water, 1 sand, 2 vegetation, 3 development)",
                media_type=pystac.MediaType.COG,
                roles=["labels"],
            ),
        )
    return item


def export_item(storm: Storm, group: str, files: list[ExportFile]) -> pystac.Item:
    """The Item of one exported map, with each file (PMTiles, MBTiles, COG) as an asset."""
    first = files[0].metadata
    named = next((f.metadata for f in files if f.metadata.get("name")), first)
    dates = scene_datetimes(storm)
    created = first.get("created")
    properties: dict[str, Any] = {
        "title": named.get("name") or group,
        "description": named.get("description"),
        f"{NS}:layer": files[0].layer,
    }
    if files[0].layer == "metric":
        properties.update(
            {
                f"{NS}:metric": first.get("metric"),
                f"{NS}:classes": first.get("classes"),
                f"{NS}:source": first.get("source"),
                f"{NS}:model_id": first.get("model_id"),
                f"{NS}:analysis_zoom": first.get("analysis_zoom"),
            }
        )
    if dates:
        properties["start_datetime"] = dates[0].isoformat()
        properties["end_datetime"] = dates[-1].isoformat()
    if created:
        properties["created"] = created
    fallback = datetime.fromisoformat(created) if created else datetime.now(UTC)
    item = pystac.Item(
        id=group,
        geometry=shapely.geometry.mapping(storm.coverage),
        bbox=list(storm.bounds),
        datetime=None if dates else fallback,
        properties={k: v for k, v in properties.items() if v is not None},
        collection=storm.name,
    )
    for export in files:
        item.add_asset(_asset_key(export, item.assets), _export_asset(item, export))
    return item


def _asset_key(export: ExportFile, taken: dict[str, pystac.Asset]) -> str:
    """``cog`` (``cog-256px`` for 256 px per analysis tile), ``pmtiles``, ``mbtiles``
    (``pmtiles-webp`` beside a PNG one); the file's name if that is taken too."""
    if FORMATS[export.format].holds == "values":
        ppt = export.metadata.get("pixels_per_tile", 1)
        key = export.format if ppt == 1 else f"{export.format}-{ppt}px"
    else:
        key = export.format
        if key in taken:
            key = f"{key}-{export.metadata.get('format')}"
    return key if key not in taken else export.path.stem


def _export_asset(item: pystac.Item, export: ExportFile) -> pystac.Asset:
    meta = export.metadata
    href = str(export.path.resolve())
    fmt = FORMATS[export.format]
    if fmt.holds == "values":
        with rasterio.open(export.path) as ds:
            proj = get_projection_info(ds)
            bands = get_raster_info(ds, max_size=1024)
        for schema in (PROJECTION_SCHEMA, RASTER_SCHEMA):
            if schema not in item.stac_extensions:
                item.stac_extensions.append(schema)
        fields = {f"proj:{k}": v for k, v in proj.items() if v is not None}
        fields["raster:bands"] = bands
        fields[f"{NS}:pixels_per_tile"] = meta.get("pixels_per_tile")
        return pystac.Asset(
            href,
            title=f"{meta.get('metric')} values (float32, NaN: no value; overviews: aggregates)",
            media_type=fmt.media_type,
            roles=["data"],
            extra_fields=fields,
        )
    extra = {
        f"{NS}:tile_format": meta.get("format"),
        f"{NS}:minzoom": meta.get("minzoom"),
        f"{NS}:maxzoom": meta.get("maxzoom"),
    }
    if meta.get("legend_stops"):
        extra[f"{NS}:legend_stops"] = meta["legend_stops"]
        extra[f"{NS}:colormap_name"] = meta.get("colormap_name")
    return pystac.Asset(
        href,
        title=f"{fmt.title} archive of the map tiles",
        media_type=fmt.media_type,
        roles=["visual"],
        extra_fields={k: v for k, v in extra.items() if v is not None},
    )
