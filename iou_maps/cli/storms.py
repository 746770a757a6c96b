"""The storm commands: ``synth`` (a synthetic storm), ``ingest`` and ``storms`` (list them,
or summarise one from the cache)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from iou_maps.cli.output import (
    DataDir,
    JsonOutput,
    console,
    fail,
    out,
    print_json,
    print_table,
    progress_bar,
    settings,
    storm_name,
    storm_or_exit,
)
from iou_maps.config import Settings
from iou_maps.errors import ModelNotFound
from iou_maps.storms.catalog import Catalog
from iou_maps.storms.ingest import ingest


def synth(
    storm: Annotated[str, typer.Argument(help="Storm name.", callback=storm_name)],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    scenes: Annotated[int, typer.Option(min=1, help="Number of scenes.")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same storm).")] = 0,
    fmt: Annotated[
        str, typer.Option("--format", help="geotiff | jpeg (+ world file) | noaa-jpg (+ CSV).")
    ] = "geotiff",
    size: Annotated[int, typer.Option(min=256, help="Scene width/height in pixels.")] = 1536,
    tar: Annotated[bool, typer.Option("--tar", help="Pack each flight into a .tar.")] = False,
    classes: Annotated[
        str,
        typer.Option(
            help="Class set of the labels: demo (water, sand, vegetation, development), water "
            "(water, not_water) or buildings (water, sand, vegetation, paved, building)."
        ),
    ] = "demo",
) -> None:
    """Generate a synthetic NOAA-like post-hurricane storm (scenes + label rasters)."""
    from iou_maps.storms.synthetic.classes import SYNTHETIC_CLASSES
    from iou_maps.storms.synthetic.generate import FORMATS, generate_storm

    if classes not in SYNTHETIC_CLASSES:
        raise typer.BadParameter(
            f"unknown class set {classes!r}; valid: {', '.join(SYNTHETIC_CLASSES)}"
        )
    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    with progress_bar() as bar:
        task = bar.add_task(f"synth {storm}", total=scenes, rate="")
        result = generate_storm(
            storm, out_dir, scenes=scenes, seed=seed, fmt=fmt, size=size, tar=tar,
            progress=lambda n: bar.advance(task, n), classes=classes,
        )  # fmt: skip
    out.print(f"wrote {len(result.scenes)} scenes of storm {storm!r} to {out_dir}")


def ingest_cmd(
    storm: Annotated[str, typer.Argument(help="Storm name.", callback=storm_name)],
    paths: Annotated[list[Path], typer.Argument(help="Folders, files or .tar archives.")],
    data_dir: DataDir = None,
) -> None:
    """Ingest GeoTIFFs, JPEG+world files or JPEGs+corner CSV into COGs and a footprints index."""
    s = settings(data_dir)
    with progress_bar() as bar:
        task = bar.add_task(f"ingest {storm}", total=None, rate="")
        report = ingest(
            s.data_dir, storm, paths,
            on_total=lambda n: bar.update(task, total=n),
            on_scene=lambda _id, _status: bar.advance(task),
        )  # fmt: skip
    for skipped in report.skipped:
        console.print(f"[yellow]skipped[/yellow] {skipped.path}: {skipped.reason}")
    out.print(
        f"storm {storm!r}: {len(report.ingested)} ingested, {len(report.unchanged)} unchanged, "
        f"{len(report.skipped)} skipped"
    )
    if not report.ingested and not report.unchanged:
        raise fail("nothing was ingested", 1)


def storms(
    storm: Annotated[
        str | None,
        typer.Argument(help="A storm: what the cache knows about it (tiles, mIoU, accuracy)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name (default: $IOU_MAPS_MODEL).")
    ] = None,
    json_out: JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """List the ingested storms, or summarise one: its analysis tiles (cached, with imagery,
    labelled), the predicted mIoU's histogram and, where labels exist, the regressor's MAE and
    Pearson r against the true metrics (from the cache: see `precompute --source true`)."""
    s = settings(data_dir)
    if model:
        s.model = model
    catalog = Catalog(s.data_dir)
    if storm is not None:
        _storm_summary(s, catalog, storm_name(storm), json_out)
        return
    summary = catalog.summary()
    if json_out:
        print_json(summary.to_dict(orient="records"))
        return
    if summary.empty:
        out.print(f"no storms under {s.storms_dir}")
        return
    print_table(
        list(summary.columns),
        [list(row) for row in summary.itertuples(index=False)],
        title=f"storms in {s.storms_dir}",
    )


def _storm_summary(s: Settings, catalog: Catalog, name: str, json_out: bool) -> None:
    """``storms STORM``: the catalog's row and the summary of the cache
    (iou_maps.layers.summary)."""
    import redis

    from iou_maps.compute.metric_store import MetricStore, connect
    from iou_maps.compute.truth import TRUE_NAMESPACE, SegmentationSource
    from iou_maps.layers.summary import summarize
    from iou_maps.models.classes import class_set_of_metadata
    from iou_maps.models.registry import regressor_metadata, truth_segmentation_dir

    st = storm_or_exit(catalog, name)
    row = catalog.summary().set_index("storm").loc[name].to_dict()
    try:
        meta = regressor_metadata(s.data_dir, s.model)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    model_id, zoom = str(meta["model_id"]), int(meta["analysis_zoom"])
    classes = class_set_of_metadata(meta)
    client = connect(s.redis_url, s.data_dir)
    true_store = segmentation_id = None
    try:
        segmentation_id = SegmentationSource(truth_segmentation_dir(s.data_dir, s.model)).model_id
        true_store = MetricStore(client, segmentation_id, TRUE_NAMESPACE, classes.nmetrics)
    except ModelNotFound:
        pass  # no true values: the summary says so
    try:
        predicted = MetricStore(client, model_id, nmetrics=classes.nmetrics)
        got = summarize(st, zoom, predicted, model_id, true_store, segmentation_id, classes=classes)
    except (redis.RedisError, OSError) as exc:
        raise fail(f"Redis is not reachable: {exc}") from None
    if json_out:
        print_json({"catalog": {"storm": name, **row}, **asdict(got)})
        return
    fields: list[tuple[str, Any]] = [
        ("storm", name),
        *((k, v) for k, v in row.items()),
        ("model", f"{s.model} ({model_id})"),
        ("segmentation model", segmentation_id or "none: no true values"),
        ("analysis zoom", zoom),
        ("analysis tiles", got.analysis_tiles),
        ("cached", got.cached),
        ("with imagery", got.with_imagery),
        ("labelled", got.labelled),
        ("true values cached", got.true_cached),
        ("with a true value", got.evaluated),
        ("compared", got.compared),
    ]
    print_table(["field", "value"], fields, title=f"storm {name}", header=False)
    edges, counts = got.histogram_edges, got.histogram_counts
    top = max(counts, default=0) or 1
    print_table(
        ["predicted mIoU", "tiles", ""],
        [
            (f"{lo:.1f}–{hi:.1f}", n, "█" * round(20 * n / top))
            for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)
        ],
        title="predicted mIoU of the cached tiles",
    )
    if got.accuracy is None:
        reason = "no labels" if not got.has_labels else "no true values cached"
        out.print(f"regressor vs truth: {reason} (iou-maps precompute {name} --source true)")
        return
    print_table(
        ["metric", "tiles", "MAE", "Pearson r"],
        [(m, a.n, a.mae, a.pearson_r) for m, a in got.accuracy.items()],
        title=f"regressor vs truth on {got.compared} tiles of {name}",
    )
