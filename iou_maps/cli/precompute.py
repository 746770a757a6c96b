"""The ``precompute`` command: fill the metric cache of a storm (in this process or on a Dask
cluster) and, with ``--imagery``, the imagery tile cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from iou_maps.cli.output import (
    DataDir,
    JsonOutput,
    console,
    fail,
    print_json,
    print_table,
    progress_bar,
    settings,
    storm_name,
    storm_or_exit,
)
from iou_maps.config import Settings
from iou_maps.errors import CacheUnavailable, LayerNotFillable, ModelNotFound, NoLabels
from iou_maps.layers.registry import Source, computed_layers, get_layer
from iou_maps.models import runtime
from iou_maps.storms.catalog import Catalog

if TYPE_CHECKING:
    from iou_maps.compute.plan import FillSummary

BBox = tuple[float, float, float, float]
TileProgress = Callable[[int, int], None]
# What precompute fills: the error layer is filled with `true`, never asked for on its own.

#: What ``--source`` accepts: the layers a model computes (a derived layer comes with its first
#: input: the error layer with ``true``), from the registry.
FillSource = StrEnum(  # type: ignore[misc]
    "FillSource", {layer.name: layer.name for layer in computed_layers()}
)
DEFAULT_SOURCE = FillSource(next(layer.name for layer in computed_layers() if layer.primary))


class ImageFormat(StrEnum):
    """Imagery tile formats the tile cache can be filled with."""

    png = "png"
    jpg = "jpg"
    jpeg = "jpeg"
    webp = "webp"


def _parse_bbox(value: str | None) -> BBox | None:
    if value is None:
        return None
    try:
        w, s, e, n = (float(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter(f"bbox must be W,S,E,N numbers, got {value!r}") from None
    if not (w < e and s < n):
        raise typer.BadParameter(f"bbox must have W < E and S < N, got {value!r}")
    return w, s, e, n


def precompute_cmd(
    storm: Annotated[str, typer.Argument(help="Storm name.", callback=storm_name)],
    bbox: Annotated[str | None, typer.Option(help="Only tiles in W,S,E,N (EPSG:4326).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Tiles per regressor call.")] = 64,
    workers: Annotated[int, typer.Option(min=1, help="Imagery reader threads.")] = 4,
    refresh: Annotated[bool, typer.Option("--refresh", help="Recompute cached tiles.")] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Run on the Dask cluster of this scheduler, e.g. tcp://host:8786 "
            "(default: $IOU_MAPS_DASK_SCHEDULER). Its workers need the same data directory "
            "path and REDIS_URL."
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Run on a Dask LocalCluster of N single-threaded worker processes on this "
            "machine (without --scheduler or --processes: in this process, the fastest on a "
            "small machine).",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name (default: $IOU_MAPS_MODEL).")
    ] = None,
    source: Annotated[
        FillSource,
        typer.Option(
            help="predicted: the regressor's values; true: the segmentation model against the "
            "storm's labels on its labelled tiles, then the error layer (the predictions it "
            "needs, its mean absolute errors at lower zooms)."
        ),
    ] = DEFAULT_SOURCE,
    json_out: JsonOutput = False,
    metrics: Annotated[
        bool,
        typer.Option("--metrics/--no-metrics", help="Fill the metric cache (the model runs)."),
    ] = True,
    imagery: Annotated[
        bool,
        typer.Option(
            "--imagery",
            help="Also fill the imagery tile cache ($IOU_MAPS_TILE_CACHE_URL) with the storm's "
            "low-zoom imagery tiles, the zooms the service keeps there.",
        ),
    ] = False,
    imagery_format: Annotated[
        list[ImageFormat] | None,
        typer.Option(
            "--imagery-format",
            help="Imagery tile formats to fill (repeat the option; default: webp and png).",
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Fill the cache for a storm: every analysis tile, then the lower-zoom aggregates; with
    --imagery, the imagery tile cache's zooms too (--no-metrics: those alone, no model).

    Resumable: a re-run skips what is cached for this model. Exit status 1 if any tile failed.
    """
    runtime.inference_process()
    s = settings(data_dir)
    if model:
        s.model = model
    scheduler = scheduler or s.dask_scheduler
    if scheduler and processes:
        raise typer.BadParameter("give --scheduler or --processes, not both")
    if not metrics and not imagery:
        raise typer.BadParameter("--no-metrics leaves nothing to do without --imagery")
    box = _parse_bbox(bbox)
    storm_or_exit(Catalog(s.data_dir), storm)
    report: dict[str, Any] = {}
    failed = 0
    if metrics:
        summary = _precompute_metrics(
            s, storm, scheduler, processes, box, batch_size, workers, refresh, Source(source),
            json_out,
        )  # fmt: skip
        report.update({**asdict(summary), "tiles_per_second": summary.tiles_per_second})
        failed = summary.failed
    if imagery:
        formats = [f.value for f in imagery_format] if imagery_format else None
        report["imagery"] = _precompute_imagery(s, storm, formats, refresh, workers, json_out)
    if json_out:
        print_json(report)
    if failed:
        raise fail(f"{failed} tile(s) failed; the others are stored", 1)


def _precompute_metrics(
    s: Settings, storm: str, scheduler: str | None, processes: int | None, box: BBox | None,
    batch_size: int, workers: int, refresh: bool, source: Source, json_out: bool,
) -> FillSummary:  # fmt: skip
    """``precompute``'s metric part: the analysis tiles (of ``source``) and their aggregates;
    the summary is printed (unless ``json_out``) and returned."""
    with progress_bar() as bar:
        task = bar.add_task(f"precompute {storm} {source.value}", total=None, rate="")
        first: list[tuple[int, float]] = []

        def on_progress(done: int, total: int) -> None:
            if not first:
                first.append((done, time.perf_counter()))
            n0, t0 = first[0]
            rate = (done - n0) / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{rate:.1f} tiles/s")

        try:
            if scheduler or processes:
                summary = _precompute_on_cluster(
                    s, storm, scheduler, processes, box, batch_size, workers, refresh, on_progress,
                    source,
                )  # fmt: skip
            else:
                summary = _precompute_here(
                    s, storm, box, batch_size, workers, refresh, on_progress, source
                )
        except (CacheUnavailable, ModelNotFound, NoLabels, LayerNotFillable) as exc:
            raise fail(str(exc)) from None
    if not json_out:
        _print_metric_summary(storm, source, summary)
    for line in summary.failures[:20]:
        console.print(f"[red]failed[/red] {line}", soft_wrap=True, markup=True, highlight=False)
    return summary


def _print_metric_summary(storm: str, source: Source, summary: FillSummary) -> None:
    """The table of ``precompute``'s metric part."""
    rows: list[tuple[str, Any]] = [
        ("source", summary.source),
        ("analysis tiles", summary.total),
        ("computed", summary.computed),
        ("already cached", summary.already_cached),
        ("too few labels" if get_layer(source).needs_labels else "without imagery",
         summary.no_imagery),
        ("failed", summary.failed),
        ("aggregates written", summary.aggregated),
    ]  # fmt: skip
    for name, fill in summary.layers.items():
        layer = get_layer(name)
        if name != summary.source and layer.derived:
            nouns = " and ".join(get_layer(n).noun for n in layer.inputs[1:])
            rows += [
                (f"{nouns} for the {name} layer", fill.computed),
                (f"{name} aggregates written", fill.aggregated),
            ]
    rows += [
        ("time", f"{summary.seconds:.1f} s"),
        ("tiles/s", f"{summary.tiles_per_second:.1f}"),
    ]
    title = f"precompute {storm} {summary.source} (model {summary.model_id})"
    print_table(["field", "value"], rows, title=title, header=False)


def _precompute_here(
    s: Settings, storm: str, box: BBox | None, batch_size: int, workers: int, refresh: bool,
    progress: TileProgress, source: Source,
) -> FillSummary:  # fmt: skip
    """Precompute in this process (the model loaded here)."""
    from iou_maps.compute.engine import open_engine
    from iou_maps.compute.precompute import precompute

    engine = open_engine(s)
    try:
        return precompute(
            engine, storm, source=source, bbox=box, batch_size=batch_size, workers=workers,
            refresh=refresh, progress=progress,
        )  # fmt: skip
    finally:
        engine.close()


def _precompute_on_cluster(
    s: Settings, storm: str, scheduler: str | None, processes: int | None, box: BBox | None,
    batch_size: int, workers: int, refresh: bool, progress: TileProgress, source: Source,
) -> FillSummary:  # fmt: skip
    """Precompute on a Dask cluster (an existing one, or a LocalCluster of ``processes``)."""
    from iou_maps.compute.cluster import dask_client, precompute_on_cluster

    # The workers read the data directory by this path: make it absolute for them.
    s = s.model_copy(update={"data_dir": s.data_dir.resolve()})
    where = scheduler or f"a LocalCluster of {processes} worker processes"
    console.print(f"precompute {storm} on {where}")
    with dask_client(scheduler, processes) as client:
        return precompute_on_cluster(
            client, s, storm, source=source, bbox=box, refresh=refresh, batch_size=batch_size,
            read_threads=workers, progress=progress,
        )  # fmt: skip


def _precompute_imagery(
    s: Settings, storm: str, formats: list[str] | None, refresh: bool, workers: int,
    json_out: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """``precompute --imagery``: the imagery tiles of the zooms the service keeps in the tile
    cache, rendered as the service renders them (no query parameters). The summary is printed
    (unless ``json_out``) and returned."""
    from titiler.core.resources.enums import ImageType

    from iou_maps.compute.tile_cache import connect_tile_cache, tile_cache_url
    from iou_maps.storms.imagery import DEFAULT_FORMATS, cached_zooms, precompute_imagery
    from iou_maps.storms.open_storms import OpenStorms

    cache = connect_tile_cache(s)
    if cache is None or not cache.ping():
        where = tile_cache_url(s)
        raise fail(
            f"the imagery tile cache is {'off' if where == 'off' else 'not reachable'} "
            f"({where}): set IOU_MAPS_TILE_CACHE_URL to the service's"
        )
    storms = OpenStorms(Catalog(s.data_dir))
    try:
        loaded = storms.get(storm)
        zooms = cached_zooms(loaded, s.tile_cache_below)
        image_types = [ImageType(f) for f in formats] if formats else list(DEFAULT_FORMATS)
        with progress_bar() as bar:
            task = bar.add_task(f"imagery {storm} z{zooms.start}-{zooms.stop - 1}", rate="")
            summary = precompute_imagery(
                loaded, cache, zooms, image_types, refresh=refresh, workers=min(workers, 4),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
    finally:
        storms.close()
    if not json_out:
        rows: list[tuple[str, Any]] = [
            ("zooms", f"{summary.zooms[0]}..{summary.zooms[1]}" if summary.tiles else "none"),
            ("formats", ", ".join(summary.formats)),
            ("tile addresses", summary.tiles),
            ("tiles rendered", summary.rendered),
            ("bytes kept", f"{summary.kept_bytes / 1e6:.1f} MB"),
            ("already cached", summary.already_cached),
            ("without imagery", summary.empty),
            ("time", f"{summary.seconds:.1f} s"),
        ]
        title = f"precompute --imagery {storm}"
        print_table(["field", "value"], rows, title=title, header=False)
    return asdict(summary)
