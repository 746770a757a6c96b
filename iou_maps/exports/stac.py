"""A storm in STAC: a Collection with an Item per scene and an Item per exported map.

Built with pystac and rio-stac (scene and COG metadata read from the rasters themselves),
and validated without internet access: pystac ships the STAC core schemas, and the
extension schemas rio-stac uses are kept in ``iou_maps/stac_schemas/`` (``OfflineValidator``
never fetches a schema: one it lacks is an error naming it).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pystac
import rasterio
import shapely
from pystac.extensions.projection import SCHEMA_URI as PROJECTION_SCHEMA
from pystac.extensions.raster import SCHEMA_URI as RASTER_SCHEMA
from pystac.validation import (
    JsonSchemaSTACValidator,
    RegisteredValidator,
    set_validator,
    validate_all_dict,
)
from rio_stac.stac import create_stac_item, get_projection_info, get_raster_info

from iou_maps.errors import StacError
from iou_maps.storms.catalog import Storm

__all__ = [
    "ExportFile",
    "OfflineValidator",
    "StacError",
    "StacResult",
    "build_collection",
    "find_exports",
    "offline_validation",
    "read_export",
    "write_storm_collection",
]

#: Extension schemas kept in the package (pystac's current versions of the extensions the
#: Items use): URL → file in iou_maps/stac_schemas/.
VENDORED_SCHEMAS = {
    PROJECTION_SCHEMA: "projection-v2.0.0.json",
    RASTER_SCHEMA: "raster-v1.1.0.json",
}
#: File suffixes of the exports, by format (iou_maps.exports.export).
EXPORT_SUFFIXES = {".pmtiles": "pmtiles", ".mbtiles": "mbtiles", ".tif": "cog", ".tiff": "cog"}
MEDIA_TYPES = {
    "pmtiles": "application/vnd.pmtiles",
    "mbtiles": "application/vnd.sqlite3",
    "cog": str(pystac.MediaType.COG),
}
#: Custom fields are namespaced, as STAC asks of fields outside an extension.
NS = "iou_maps"


# --------------------------------------------------------------------------- validation


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator with every schema from disk: pystac's copies of the
    core schemas and this package's of the extensions. It never fetches one."""

    def __init__(self) -> None:
        super().__init__()
        folder = resources.files("iou_maps") / "stac_schemas"
        for uri, name in VENDORED_SCHEMAS.items():
            self.schema_cache[uri] = json.loads((folder / name).read_text())

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        schema = self.schema_cache.get(schema_uri)
        if schema is None:
            raise StacError(f"no local copy of the JSON schema {schema_uri} (none is fetched)")
        return schema


@contextmanager
def offline_validation() -> Iterator[OfflineValidator]:
    """pystac's validation (``validate``, ``validate_all``) through ``OfflineValidator``
    within the block."""
    previous = RegisteredValidator._validator
    validator = OfflineValidator()
    set_validator(validator)
    try:
        yield validator
    finally:
        RegisteredValidator._validator = previous


# --------------------------------------------------------------------------- exports


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
    fmt = EXPORT_SUFFIXES.get(path.suffix.lower())
    if fmt is None or not path.is_file():
        return None
    try:
        if fmt == "pmtiles":
            meta = _pmtiles_metadata(path)
        elif fmt == "mbtiles":
            meta = _mbtiles_metadata(path)
        else:
            meta = _cog_metadata(path)
    except Exception:  # not an archive or raster we can read: not an export of ours
        return None
    if not str(meta.get("generator", "")).startswith("iou-maps") or "storm" not in meta:
        return None
    return ExportFile(path, fmt, str(meta["storm"]), str(meta.get("layer", "metric")), meta)


def _pmtiles_metadata(path: Path) -> dict[str, Any]:
    from pmtiles.reader import MmapSource, Reader

    with open(path, "rb") as f:
        return dict(Reader(MmapSource(f)).metadata())


def _mbtiles_metadata(path: Path) -> dict[str, Any]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT name, value FROM metadata").fetchall()
    finally:
        db.close()
    meta: dict[str, Any] = {}
    for name, value in rows:
        try:
            meta[name] = json.loads(value)
        except (TypeError, ValueError):
            meta[name] = value
    return meta


def _cog_metadata(path: Path) -> dict[str, Any]:
    with rasterio.open(path) as ds:
        tags = ds.tags()
    return {
        "generator": tags.get("GENERATOR", ""),
        "storm": tags.get("STORM"),
        "layer": "metric",
        "metric": tags.get("METRIC"),
        "source": tags.get("SOURCE"),
        "model_id": tags.get("MODEL_ID"),
        "analysis_zoom": int(tags.get("ANALYSIS_ZOOM", 0)),
        "pixels_per_tile": int(tags.get("PIXELS_PER_TILE", 1)),
    }


def find_exports(storm: str, paths: Sequence[Path]) -> list[ExportFile]:
    """The exports of ``storm`` among ``paths`` (files, or folders searched one level)."""
    found = []
    for p in paths:
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            export = read_export(f)
            if export is not None and export.storm == storm:
                found.append(export)
    return found


# --------------------------------------------------------------------------- items


def _scene_datetimes(storm: Storm) -> list[datetime]:
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
    dates = _scene_datetimes(storm)
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
    if export.format == "cog":
        ppt = export.metadata.get("pixels_per_tile", 1)
        key = "cog" if ppt == 1 else f"cog-{ppt}px"
    else:
        key = export.format
        if key in taken:
            key = f"{key}-{export.metadata.get('format')}"
    return key if key not in taken else export.path.stem


def _export_asset(item: pystac.Item, export: ExportFile) -> pystac.Asset:
    meta = export.metadata
    href = str(export.path.resolve())
    if export.format == "cog":
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
            media_type=MEDIA_TYPES["cog"],
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
    kind = "PMTiles" if export.format == "pmtiles" else "MBTiles"
    return pystac.Asset(
        href,
        title=f"{kind} archive of the map tiles",
        media_type=MEDIA_TYPES[export.format],
        roles=["visual"],
        extra_fields={k: v for k, v in extra.items() if v is not None},
    )


def build_collection(storm: Storm, exports: Sequence[ExportFile] = ()) -> pystac.Collection:
    """The storm's Collection: an Item per scene, an Item per exported map."""
    dates = _scene_datetimes(storm)
    interval: list[datetime | None] = [dates[0], dates[-1]] if dates else [None, None]
    collection = pystac.Collection(
        id=storm.name,
        title=f"Storm {storm.name}",
        description=(
            f"Post-storm aerial imagery of storm {storm.name!r} ({len(storm.footprints)} "
            "scenes) and maps of how well a segmentation model does on it (IoU Maps)."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([list(storm.bounds)]),
            pystac.TemporalExtent([interval]),
        ),
        license="other",
        keywords=["hurricane", "aerial imagery", "segmentation", "IoU", "model quality"],
    )
    for row in storm.footprints.itertuples(index=False):
        collection.add_item(_current(scene_item(storm, row)))
    groups: dict[str, list[ExportFile]] = {}
    for export in exports:
        groups.setdefault(export.group, []).append(export)
    for group, files in groups.items():
        collection.add_item(_current(export_item(storm, group, files)))
    return collection


def _current(item: pystac.Item) -> pystac.Item:
    """``item`` with its extensions migrated by pystac to their current versions (rio-stac
    writes the projection extension v1.1.0, whose ``proj:epsg`` v2.0.0 replaced)."""
    return pystac.Item.from_dict(item.to_dict(), migrate=True)


@dataclass
class StacResult:
    """What ``write_storm_collection`` wrote."""

    collection_path: Path
    scene_items: int
    export_items: int
    export_assets: int


def write_storm_collection(
    storm: Storm, out_dir: Path, exports: Sequence[Path] | None = None
) -> StacResult:
    """Write the storm's Collection under ``out_dir`` (``collection.json``, an Item per
    folder), with the exports among ``exports`` (default: those in ``out_dir``), and
    validate what was written. Export assets are linked relative to their Items."""
    out_dir.mkdir(parents=True, exist_ok=True)
    found = find_exports(storm.name, list(exports) if exports else [out_dir])
    if exports:
        missing = {p.resolve() for p in exports if p.is_file()} - {e.path.resolve() for e in found}
        if missing:
            raise StacError(
                "not an export of storm " + f"{storm.name!r}: " + ", ".join(map(str, missing))
            )
    collection = build_collection(storm, found)
    collection.normalize_hrefs(str(out_dir.resolve()))
    export_ids = {e.group for e in found}
    for item in collection.get_items():
        if item.id in export_ids:
            item_dir = os.path.dirname(item.get_self_href() or "")
            for asset in item.assets.values():
                asset.href = os.path.relpath(asset.href, item_dir)
    collection.save(pystac.CatalogType.SELF_CONTAINED)
    path = out_dir / "collection.json"
    validate(path)
    return StacResult(
        path,
        scene_items=len(storm.footprints),
        export_items=len(export_ids),
        export_assets=len(found),
    )


def validate(collection_path: Path) -> int:
    """Validate the Collection at ``collection_path`` and every Item under it against the
    STAC schemas, offline; the number of objects validated. StacError if one is invalid."""
    href = str(collection_path.resolve())
    with offline_validation():
        # The files as written (pystac's from_file would validate a migrated copy).
        try:
            validate_all_dict(json.loads(collection_path.read_text()), href)
        except pystac.errors.STACValidationError as exc:
            raise StacError(f"invalid STAC: {exc}") from None
    return 1 + len(pystac.Collection.from_file(href).get_item_links())
