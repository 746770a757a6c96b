"""A storm in STAC: a Collection with an Item per scene and an Item per exported map
(``stac_items``), written and validated.

Built with pystac and rio-stac (scene and COG metadata read from the rasters themselves),
and validated without internet access: pystac ships the STAC core schemas, and the
extension schemas rio-stac uses are kept in ``iou_maps/stac_schemas/`` (``OfflineValidator``
never fetches a schema: one it lacks is an error naming it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.projection import SCHEMA_URI as PROJECTION_SCHEMA
from pystac.extensions.raster import SCHEMA_URI as RASTER_SCHEMA
from pystac.validation import (
    JsonSchemaSTACValidator,
    RegisteredValidator,
    set_validator,
    validate_all_dict,
)

from iou_maps.errors import StacError
from iou_maps.exports.stac_items import (
    ExportFile,
    export_item,
    find_exports,
    scene_datetimes,
    scene_item,
)
from iou_maps.storms.catalog import Storm

__all__ = [
    "OfflineValidator",
    "StacResult",
    "build_collection",
    "offline_validation",
    "validate",
    "write_storm_collection",
]

#: Extension schemas kept in the package (pystac's current versions of the extensions the
#: Items use): URL → file in iou_maps/stac_schemas/.
VENDORED_SCHEMAS = {
    PROJECTION_SCHEMA: "projection-v2.0.0.json",
    RASTER_SCHEMA: "raster-v1.1.0.json",
}


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


def build_collection(storm: Storm, exports: Sequence[ExportFile] = ()) -> pystac.Collection:
    """The storm's Collection: an Item per scene, an Item per exported map."""
    dates = scene_datetimes(storm)
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
