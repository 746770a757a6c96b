"""The export commands: ``export`` (a storm's map as a PMTiles or MBTiles archive, or a COG)
and ``stac`` (a STAC Collection of the storm and its exports)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from iou_maps.cli.output import (
    DataDir,
    fail,
    out,
    progress_bar,
    settings,
    storm_name,
    storm_or_exit,
)
from iou_maps.errors import (
    BadTileFormat,
    CacheUnavailable,
    ExportError,
    ImageryReadError,
    ModelNotFound,
    NoLabels,
    StacError,
    UnknownMetric,
    UnsupportedLayer,
)
from iou_maps.exports.filling import open_export_engine
from iou_maps.exports.formats import FORMATS
from iou_maps.exports.maps import ImageryMap, MetricMap
from iou_maps.exports.options import ExportOptions
from iou_maps.layers.registry import Source
from iou_maps.storms.catalog import Catalog

#: Export file formats: the registry's (``iou_maps.exports.formats``).
ExportFormat = StrEnum("ExportFormat", {name: name for name in FORMATS})  # type: ignore[misc]


class ExportLayer(StrEnum):
    """What a tile archive holds."""

    metric = "metric"
    imagery = "imagery"


def export_cmd(
    storm: Annotated[str, typer.Argument(help="Storm name.", callback=storm_name)],
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", help="pmtiles | mbtiles (tile archives) | cog (float values)."),
    ],
    out_file: Annotated[Path, typer.Option("--out", help="File to write (replaced whole).")],
    metric: Annotated[
        str, typer.Option(help="Metric layer: iou_<class> of the model's classes, miou or dice.")
    ] = "miou",
    source: Annotated[
        Source,
        typer.Option(
            help="predicted (the regressor), true (the segmentation model against the "
            "storm's labels) or error (predicted - true; lower zooms: mean absolute error)."
        ),
    ] = Source.predicted,
    layer: Annotated[
        ExportLayer,
        typer.Option(help="metric, or the storm's imagery as its own archive."),
    ] = ExportLayer.metric,
    minzoom: Annotated[
        int | None, typer.Option(help="Lowest zoom (default: the service's for the storm).")
    ] = None,
    maxzoom: Annotated[
        int | None, typer.Option(help="Highest zoom (default: the service's for the storm).")
    ] = None,
    colormap: Annotated[
        str | None,
        typer.Option(
            help="Colormap name, as the tiles' colormap_name= (default: the service's for the "
            "source: rdylgn; error: rdbu_r)."
        ),
    ] = None,
    rescale: Annotated[
        str | None,
        typer.Option(
            help="MIN,MAX of the metric that the colormap spans (default: the service's for "
            "the source: 0,1; error: -0.5,0.5)."
        ),
    ] = None,
    tile_format: Annotated[
        str | None,
        typer.Option(
            help="Tile encoding: png or webp (metric, default png); webp, png or "
            "jpeg (imagery, default webp)."
        ),
    ] = None,  # fmt: skip
    pixels_per_tile: Annotated[
        int, typer.Option(min=1, max=256, help="COG: pixels across each analysis tile.")
    ] = 1,
    attribution: Annotated[str | None, typer.Option(help="Attribution in the metadata.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name (default: $IOU_MAPS_MODEL).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Export a storm's map as a file: the service's metric tiles (or imagery) in a PMTiles or
    MBTiles archive, or the metric values as a Cloud-Optimized GeoTIFF.

    Values come from the service's cache; missing ones are computed (and cached) as the
    service would, so a run on a precomputed storm makes no model call.
    """
    s = settings(data_dir)
    if model:
        s.model = model
    storm_or_exit(Catalog(s.data_dir), storm)
    export_format = FORMATS[fmt.value]
    options = ExportOptions(
        tile_format=tile_format, minzoom=minzoom, maxzoom=maxzoom, attribution=attribution,
        pixels_per_tile=pixels_per_tile,
    )  # fmt: skip
    metric_layer = _metric_layer(storm, metric, source, colormap, rescale)
    chosen = ImageryMap(storm) if layer is ExportLayer.imagery else metric_layer
    try:
        export_format.check(chosen, options)
    except UnsupportedLayer as exc:
        raise typer.BadParameter(f"--layer {layer.value}: {exc}") from None
    except BadTileFormat:
        raise typer.BadParameter(f"--tile-format {tile_format!r} is not valid here") from None
    except ExportError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        engine = open_export_engine(s)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    try:
        with progress_bar() as bar:
            fill = _bar_task(bar, f"values {storm}")
            tiles = _bar_task(bar, f"{fmt.value} {out_file.name}")
            summary = export_format.write(
                engine, chosen, out_file, options, fill_progress=fill, progress=tiles
            )
    except (ExportError, NoLabels, ModelNotFound, UnknownMetric) as exc:
        raise fail(str(exc)) from None
    except (CacheUnavailable, ImageryReadError) as exc:
        raise fail(str(exc), 1) from None
    finally:
        engine.close()
    table = Table(title=f"export {storm} → {summary.path}", show_header=False)
    for name, value in (
        ("format", summary.format),
        ("zooms", "{}..{}".format(*summary.zooms)),
        ("tiles written", summary.tiles),
        ("bytes", summary.bytes),
        ("bytes/tile", f"{summary.bytes / max(summary.tiles, 1):.0f}"),
        ("values computed", summary.fill.computed),
        ("model calls", summary.fill.model_calls),
        ("aggregates written", summary.fill.all_aggregated),
        ("time", f"{summary.seconds:.1f} s"),
    ):
        table.add_row(name, str(value))
    out.print(table)


def _metric_layer(
    storm: str, metric: str, source: Source, colormap: str | None, rescale: str | None
) -> MetricMap:
    """The metric map the options ask for, or a usage error saying what is wrong."""
    span = _parse_range(rescale, "rescale") if rescale is not None else None
    try:
        return MetricMap(storm, metric, source.value, colormap or "", span)
    except ExportError as exc:
        raise typer.BadParameter(str(exc)) from None


def stac_cmd(
    storm: Annotated[str, typer.Argument(help="Storm name.", callback=storm_name)],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of the STAC Collection.")],
    exports: Annotated[
        list[Path] | None,
        typer.Option(
            "--export",
            help="Export files to catalogue (default: the storm's exports in --out).",
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Write a STAC Collection of a storm: an Item per scene (footprint, datetime, COG) and an
    Item per exported map with its files as assets; validated against the STAC schemas."""
    from iou_maps.exports.stac import write_storm_collection

    s = settings(data_dir)
    st = storm_or_exit(Catalog(s.data_dir), storm)
    try:
        result = write_storm_collection(st, out_dir, exports=exports)
    except StacError as exc:
        raise fail(str(exc), 1) from None
    out.print(
        f"STAC Collection {result.collection_path}: {result.scene_items} scene items, "
        f"{result.export_items} export items ({result.export_assets} assets); valid"
    )


def _parse_range(value: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter(f"--{name} must be MIN,MAX numbers, got {value!r}") from None
    return lo, hi


def _bar_task(bar: Progress, description: str) -> Callable[[int, int], None]:
    """A (done, total) callback drawing one Rich task, added on its first call."""
    task: list[TaskID] = []

    def update(done: int, total: int) -> None:
        if not task:
            task.append(bar.add_task(description, total=total, rate=""))
        bar.update(task[0], completed=done, total=total)

    return update
