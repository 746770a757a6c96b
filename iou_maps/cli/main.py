"""The ``iou-maps`` command line (Typer + Rich)."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from iou_maps.config import Settings
from iou_maps.errors import (
    CacheUnavailable,
    ExportError,
    ImageryReadError,
    InvalidStormName,
    ModelNotFound,
    NoLabels,
    StacError,
    StormNotFound,
)
from iou_maps.models import runtime
from iou_maps.models.classes import METRICS, Source
from iou_maps.storms.catalog import Catalog, ingest, validate_storm_name

app = typer.Typer(
    help="IoU Maps: where a segmentation model of post-storm imagery can be trusted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# TensorFlow's C++ start-up chatter buries the progress bars; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
console = Console(stderr=True)
# Lines are never wrapped at the console's width: piped into grep or a file they stay whole.
out = Console(soft_wrap=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $IOU_MAPS_DATA_DIR or ./data)."),
]


def settings(data_dir: Path | None = None) -> Settings:
    """The settings from the environment, with the ``--data-dir`` option's folder if given."""
    s = Settings()
    if data_dir is not None:
        s.data_dir = data_dir
    return s


def progress_bar() -> Progress:
    """A Rich progress bar on stderr (stdout stays for results)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print JSON (for scripts) instead of a table.")
]


def _plain(value: Any) -> Any:
    """``value`` as JSON has it: numpy scalars as numbers, NaN as null, nested alike."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (NaN as null)."""
    sys.stdout.write(json.dumps(_plain(data), indent=2) + "\n")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""
    return f"{value:.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    header: bool = True,
) -> None:
    """A Rich table on a terminal; otherwise tab-separated lines (the header line first)
    with every value whole, for scripts: Rich would cut them to 80 columns."""
    if out.is_terminal:
        table = Table(title=title, show_header=header)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        out.print(table)
        return
    lines = (["\t".join(columns)] if header else []) + [
        "\t".join(_cell(v) for v in row) for row in rows
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error and return the Exit to raise (status ``code``)."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


class ImageFormat(StrEnum):
    """Imagery tile formats the tile cache can be filled with."""

    png = "png"
    jpg = "jpg"
    jpeg = "jpeg"
    webp = "webp"


def storm_name(value: str) -> str:
    """Typer callback: the storm name, or a usage error naming the rule."""
    try:
        return validate_storm_name(value)
    except InvalidStormName as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
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
) -> None:
    """Generate a synthetic NOAA-like post-hurricane storm (scenes + label rasters)."""
    from iou_maps.storms.synthetic import FORMATS, generate_storm

    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    with progress_bar() as bar:
        task = bar.add_task(f"synth {storm}", total=scenes, rate="")
        result = generate_storm(
            storm, out_dir, scenes=scenes, seed=seed, fmt=fmt, size=size, tar=tar,
            progress=lambda n: bar.advance(task, n),
        )  # fmt: skip
    out.print(f"wrote {len(result.scenes)} scenes of storm {storm!r} to {out_dir}")


@app.command("ingest")
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


@app.command()
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
    from iou_maps.models.registry import regressor_metadata, truth_segmentation_dir

    st = _storm_or_exit(catalog, name)
    row = catalog.summary().set_index("storm").loc[name].to_dict()
    try:
        meta = regressor_metadata(s.data_dir, s.model)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    model_id, zoom = str(meta["model_id"]), int(meta["analysis_zoom"])
    client = connect(s.redis_url, s.data_dir)
    true_store = segmentation_id = None
    try:
        segmentation_id = SegmentationSource(truth_segmentation_dir(s.data_dir, s.model)).model_id
        true_store = MetricStore(client, segmentation_id, TRUE_NAMESPACE)
    except ModelNotFound:
        pass  # no true values: the summary says so
    try:
        got = summarize(
            st, zoom, MetricStore(client, model_id), model_id, true_store, segmentation_id
        )
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


class FillSource(StrEnum):
    """What precompute fills (the error layer comes with ``true``)."""

    predicted = "predicted"
    true = "true"


class RegressorKind(StrEnum):
    """The regressor designs of iou_maps.models.regressor (KINDS)."""

    softmax = "softmax"
    encoder = "encoder"


Epochs = Annotated[int | None, typer.Option(min=1, help="Training epochs (default: config).")]


def rich_progress(bar: Progress) -> Callable[[str, int | None], Callable[[int], None]]:
    """A pipeline Progress factory drawing one Rich task per step."""

    def factory(description: str, total: int | None) -> Callable[[int], None]:
        task = bar.add_task(description, total=total, rate="")
        return lambda n: bar.advance(task, n)

    return factory


def _load_seg(data_dir: Path, name: str):
    from iou_maps.models.registry import load_segmentation_model

    try:
        return load_segmentation_model(data_dir, name)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None


@app.command("train-segmentation")
def train_segmentation_cmd(
    storms: Annotated[list[str], typer.Argument(help="Storms with labels to train on.")],
    out_name: Annotated[str, typer.Option("--out", help="Model name to write.")] = "demo",
    config: Annotated[
        Path | None, typer.Option(help="segmentation_gym config JSON (default: demo config).")
    ] = None,
    epochs: Epochs = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Train a segmentation_gym-compatible UNet on the storms' labelled analysis tiles."""
    from iou_maps.models.pipeline import train_segmentation_on
    from iou_maps.models.registry import segmentation_dir, validate_model_name
    from iou_maps.models.segmentation.files import save_segmentation

    s = settings(data_dir)
    validate_model_name(out_name)
    catalog = Catalog(s.data_dir)
    chosen = [_storm_or_exit(catalog, storm_name(n)) for n in storms]
    with progress_bar() as bar:
        try:
            seg, history = train_segmentation_on(
                chosen, s.analysis_zoom, config=config, epochs=epochs, seed=seed,
                progress=rich_progress(bar),
            )  # fmt: skip
        except ValueError as exc:
            raise fail(str(exc)) from None
    target = segmentation_dir(s.data_dir, out_name)
    save_segmentation(seg, target)
    acc = history.get("val_accuracy", [float("nan")])[-1]
    out.print(f"saved segmentation model {out_name!r} to {target} (val accuracy {acc:.3f})")


@app.command()
def evaluate(
    storm: Annotated[str, typer.Argument(help="Storm with labels.", callback=storm_name)],
    model: Annotated[str, typer.Option(help="Model name (its segmentation part).")] = "demo",
    out_file: Annotated[Path, typer.Option("--out", help="GeoParquet table to write.")] = Path(
        "evaluation.parquet"
    ),
    data_dir: DataDir = None,
) -> None:
    """True metrics of the segmentation model on every labelled analysis tile of a storm.

    Writes the GeoParquet table, a per-scene summary CSV beside it (``*_scenes.csv``) and the
    "model example output" figure (``*_examples.png``).
    """
    runtime.inference_process()
    from iou_maps.models.pipeline import evaluate_storm

    s = settings(data_dir)
    st = _storm_or_exit(Catalog(s.data_dir), storm)
    seg = _load_seg(s.data_dir, model)
    with progress_bar() as bar:
        try:
            result = evaluate_storm(st, seg, s.analysis_zoom, progress=rich_progress(bar))
        except ValueError as exc:
            raise fail(str(exc)) from None
    paths = result.write(out_file)
    t = result.table
    out.print(
        f"{len(t)} tiles: mIoU mean {t['miou'].mean():.3f} std {t['miou'].std():.3f}; wrote "
        + ", ".join(str(p) for p in paths)
    )


@app.command("train-regressor")
def train_regressor_cmd(
    segmentation: Annotated[str, typer.Option(help="Segmentation model name to cut.")],
    tables: Annotated[list[Path], typer.Option("--table", help="Tables from `evaluate`.")],
    out_name: Annotated[str, typer.Option("--out", help="Model name to write.")] = "demo",
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping).")] = 400,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    kind: Annotated[
        RegressorKind,
        typer.Option(
            help="softmax: statistics of the whole UNet's softmax (accurate); encoder: pooled "
            "encoder features (the seed design, ~20x cheaper per tile, less accurate)."
        ),
    ] = RegressorKind.softmax,
    data_dir: DataDir = None,
) -> None:
    """Train the metric regressor on `evaluate` tables (validation split by scene)."""
    from iou_maps.models.pipeline import regressor_metadata, regressor_training_set
    from iou_maps.models.registry import regressor_dir, validate_model_name
    from iou_maps.models.regressor.files import save_regressor
    from iou_maps.models.regressor.train import plot_report, train_regressor

    s = settings(data_dir)
    validate_model_name(out_name)
    seg = _load_seg(s.data_dir, segmentation)
    for path in tables:
        if not path.is_file():
            raise fail(f"no such table: {path}")
    with progress_bar() as bar:
        try:
            data = regressor_training_set(Catalog(s.data_dir), tables, progress=rich_progress(bar))
        except (StormNotFound, ValueError) as exc:
            raise fail(str(exc)) from None
    with console.status(f"training the regressor head on {len(data.images)} tiles"):
        model, report = train_regressor(
            seg, data.images, data.targets, data.scene_sets, epochs=epochs, seed=seed,
            kind=kind.value,
        )  # fmt: skip
    metadata = regressor_metadata(segmentation, seg, s.analysis_zoom, data, report)
    target = regressor_dir(s.data_dir, out_name)
    reg = save_regressor(model, metadata, target)
    plot_report(report, target / "validation.png")
    m = report["scores"]["miou"]
    out.print(
        f"{reg.kind} regressor {out_name!r} (model id {reg.model_id}): "
        f"validation mIoU MAE {m['mae']:.3f}, "
        f"r {m['pearson_r']:.2f}, constant-mean MAE {m['baseline_mae']:.3f}; "
        f"report {target / 'validation.png'}"
    )


@app.command()
def predict(
    storm: Annotated[str, typer.Argument(help="Storm name.", callback=storm_name)],
    model: Annotated[str, typer.Option(help="Model name (its regressor).")] = "demo",
    out_file: Annotated[
        Path, typer.Option("--out", help="Output .parquet (.geojson and .csv beside it).")
    ] = Path("predictions.parquet"),
    data_dir: DataDir = None,
) -> None:
    """Predicted metrics for every analysis tile of a storm → GeoParquet, GeoJSON, CSV."""
    runtime.inference_process()
    from iou_maps.exports.prediction import predict_table, write_exports
    from iou_maps.models.pipeline import storm_chips
    from iou_maps.models.registry import load_regressor_model

    s = settings(data_dir)
    st = _storm_or_exit(Catalog(s.data_dir), storm)
    try:
        reg = load_regressor_model(s.data_dir, model)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    with progress_bar() as bar:
        chips = storm_chips(st, reg.analysis_zoom, labelled=False, progress=rich_progress(bar))
    with console.status(f"predicting {len(chips)} tiles"):
        table = predict_table(chips, reg.predict, reg.model_id)
    paths = write_exports(table, out_file)
    out.print(
        f"{len(table)} tiles, predicted mIoU mean {table['miou'].mean():.3f}; wrote "
        + ", ".join(str(p) for p in paths)
    )


def _parse_bbox(value: str | None) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        w, s, e, n = (float(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter(f"bbox must be W,S,E,N numbers, got {value!r}") from None
    if not (w < e and s < n):
        raise typer.BadParameter(f"bbox must have W < E and S < N, got {value!r}")
    return w, s, e, n


@app.command("precompute")
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
    ] = FillSource.predicted,
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
    _storm_or_exit(Catalog(s.data_dir), storm)
    report: dict[str, Any] = {}
    failed = 0
    if metrics:
        summary = _precompute_metrics(
            s, storm, scheduler, processes, box, batch_size, workers, refresh, source, json_out
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
    s: Settings, storm: str, scheduler: str | None, processes: int | None, box,
    batch_size: int, workers: int, refresh: bool, source: FillSource, json_out: bool,
) -> Any:  # fmt: skip
    """``precompute``'s metric part: the analysis tiles (of ``source``) and their aggregates;
    the summary is printed (unless ``json_out``) and returned."""
    from iou_maps.models.classes import Source

    with progress_bar() as bar:
        task = bar.add_task(f"precompute {storm} {source.value}", total=None, rate="")
        first: list[tuple[int, float]] = []

        def on_progress(done: int, total: int) -> None:
            if not first:
                first.append((done, time.perf_counter()))
            n0, t0 = first[0]
            rate = (done - n0) / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{rate:.1f} tiles/s")

        fill_source = Source(source.value)
        try:
            if scheduler or processes:
                summary = _precompute_on_cluster(
                    s, storm, scheduler, processes, box, batch_size, workers, refresh, on_progress,
                    fill_source,
                )  # fmt: skip
            else:
                summary = _precompute_here(
                    s, storm, box, batch_size, workers, refresh, on_progress, fill_source
                )
        except (CacheUnavailable, ModelNotFound, NoLabels) as exc:
            raise fail(str(exc)) from None
    if not json_out:
        rows: list[tuple[str, Any]] = [
            ("source", summary.source),
            ("analysis tiles", summary.total),
            ("computed", summary.computed),
            ("already cached", summary.already_cached),
            ("without imagery" if source is FillSource.predicted else "too few labels",
             summary.no_imagery),
            ("failed", summary.failed),
            ("aggregates written", summary.aggregated),
        ]  # fmt: skip
        if source is FillSource.true:
            rows += [
                ("predictions for the error layer", summary.error_predictions),
                ("error aggregates written", summary.error_aggregated),
            ]
        rows += [
            ("time", f"{summary.seconds:.1f} s"),
            ("tiles/s", f"{summary.tiles_per_second:.1f}"),
        ]
        title = f"precompute {storm} {summary.source} (model {summary.model_id})"
        print_table(["field", "value"], rows, title=title, header=False)
    for line in summary.failures[:20]:
        console.print(f"[red]failed[/red] {line}", soft_wrap=True, markup=True, highlight=False)
    return summary


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
    from iou_maps.storms.mosaic import OpenStorms

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


@app.command()
def demo(
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the server at the end.")
    ] = True,
    host: Annotated[str | None, typer.Option(help="Bind address for the server.")] = None,
    port: Annotated[int | None, typer.Option(help="Port for the server.")] = None,
    data_dir: DataDir = None,
) -> None:
    """The whole pipeline on synthetic storms, then the server; reuses what already exists.

    synthetic storm + validation storm → ingest → train segmentation → evaluate → train
    regressor → precompute (predicted, then true and error values) → serve. Uses the
    embedded Redis unless REDIS_URL is set.
    """
    from iou_maps.cli.demo import DemoPlan, prepare
    from iou_maps.compute.engine import open_engine
    from iou_maps.compute.precompute import precompute
    from iou_maps.models.classes import Source

    s = settings(data_dir)
    plan = DemoPlan(data_dir=s.data_dir, model=s.model, analysis_zoom=s.analysis_zoom)
    started = time.perf_counter()
    with progress_bar() as bar:
        storm, _val, _reg = prepare(plan, progress=rich_progress(bar), log=bar.console.print)
    s.model = plan.model
    engine = open_engine(s)
    for source in (Source.predicted, Source.true):
        with progress_bar() as bar:
            task = bar.add_task(f"precompute {storm.name} {source.value}", total=None, rate="")
            summary = precompute(
                engine, storm.name, source=source,
                progress=functools.partial(_draw_progress, bar, task),
            )  # fmt: skip
        out.print(
            f"precompute {storm.name} {source.value}: {summary.computed} computed, "
            f"{summary.already_cached} already cached, {summary.failed} failed"
        )
    out.print(f"demo ready in {time.perf_counter() - started:.0f} s")
    engine.close()
    del engine  # releases the embedded Redis before the server opens it
    if serve_after:
        # This process trained, so TensorFlow runs here with oneDNN off, and it cannot switch
        # once imported: the server replaces it as a fresh process that only infers.
        argv = [sys.executable, "-m", "iou_maps.cli", "serve", "--data-dir", str(s.data_dir)]
        argv += ["--host", host] if host is not None else []
        argv += ["--port", str(port)] if port is not None else []
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default: $IOU_MAPS_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: $IOU_MAPS_PORT or 8000).")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="API processes (uvicorn workers) sharing the port; each runs the model in "
            "$IOU_MAPS_INFERENCE_PROCESSES worker processes of its own, and all compute each "
            "tile once between them (Redis locks).",
        ),
    ] = 1,
    data_dir: DataDir = None,
) -> None:
    """Run the tile service (imagery + metric tiles, point lookup, viewer at /)."""
    runtime.inference_process()
    import uvicorn

    s = settings(data_dir)
    if host is not None:
        s.host = host
    if port is not None:
        s.port = port
    # The library never imports the web layer: uvicorn loads the app factory by name, and
    # the factory reads the same settings from the environment.
    os.environ["IOU_MAPS_DATA_DIR"] = str(s.data_dir)
    out.print(f"IoU Maps viewer: http://{s.host}:{s.port}/")
    uvicorn.run("service.app:app_from_env", factory=True, host=s.host, port=s.port, workers=workers)


class ExportFormat(StrEnum):
    """Export file formats."""

    pmtiles = "pmtiles"
    mbtiles = "mbtiles"
    cog = "cog"


class ExportLayer(StrEnum):
    """What a tile archive holds."""

    metric = "metric"
    imagery = "imagery"


MetricName = StrEnum("MetricName", {m: m for m in METRICS})  # type: ignore[misc]
DEFAULT_METRIC = MetricName("miou")


@app.command("export")
def export_cmd(
    storm: Annotated[str, typer.Argument(help="Storm name.", callback=storm_name)],
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", help="pmtiles | mbtiles (tile archives) | cog (float values)."),
    ],
    out_file: Annotated[Path, typer.Option("--out", help="File to write (replaced whole).")],
    metric: Annotated[MetricName, typer.Option(help="Metric layer.")] = DEFAULT_METRIC,
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
    from iou_maps.exports.export import (
        ArchiveFormat,
        ImageryFormat,
        MetricLayer,
        export_cog,
        export_imagery_archive,
        export_metric_archive,
        open_export_engine,
    )
    from iou_maps.layers.render import MetricFormat

    s = settings(data_dir)
    if model:
        s.model = model
    _storm_or_exit(Catalog(s.data_dir), storm)
    span = _parse_range(rescale, "rescale") if rescale is not None else None
    try:
        metric_layer = MetricLayer(storm, metric.value, source.value, colormap or "", span)
        if layer is ExportLayer.imagery:
            if fmt is ExportFormat.cog:
                raise typer.BadParameter("--layer imagery: the COG holds metric values only")
            imagery_format = ImageryFormat(tile_format or "webp")
        elif fmt is not ExportFormat.cog:
            metric_format = MetricFormat(tile_format or "png")
            if metric_format.raw:
                raise ValueError
    except ValueError as exc:
        if isinstance(exc, ExportError):
            raise typer.BadParameter(str(exc)) from None
        raise typer.BadParameter(f"--tile-format {tile_format!r} is not valid here") from None
    try:
        engine = open_export_engine(s)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    try:
        with progress_bar() as bar:
            fill = _bar_task(bar, f"values {storm}")
            tiles = _bar_task(bar, f"{fmt.value} {out_file.name}")
            if layer is ExportLayer.imagery:
                summary = export_imagery_archive(
                    engine, storm, out_file, ArchiveFormat(fmt.value), fmt=imagery_format,
                    minzoom=minzoom, maxzoom=maxzoom, attribution=attribution, progress=tiles,
                )  # fmt: skip
            elif fmt is ExportFormat.cog:
                summary = export_cog(
                    engine, metric_layer, out_file, pixels_per_tile=pixels_per_tile,
                    fill_progress=fill, progress=tiles,
                )  # fmt: skip
            else:
                summary = export_metric_archive(
                    engine, metric_layer, out_file, ArchiveFormat(fmt.value),
                    fmt=metric_format, minzoom=minzoom, maxzoom=maxzoom,
                    attribution=attribution, fill_progress=fill, progress=tiles,
                )  # fmt: skip
    except (ExportError, NoLabels, ModelNotFound) as exc:
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
        ("aggregates written", summary.fill.aggregates_written),
        ("time", f"{summary.seconds:.1f} s"),
    ):
        table.add_row(name, str(value))
    out.print(table)


@app.command("stac")
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
    st = _storm_or_exit(Catalog(s.data_dir), storm)
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


def _precompute_here(
    s: Settings, storm: str, box, batch_size: int, workers: int, refresh: bool, progress,
    source,
):  # fmt: skip
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
    s: Settings, storm: str, scheduler: str | None, processes: int | None, box,
    batch_size: int, workers: int, refresh: bool, progress, source,
):  # fmt: skip
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


def _draw_progress(bar: Progress, task: TaskID, done: int, total: int) -> None:
    """Move ``bar``'s ``task`` to ``done`` of ``total``."""
    bar.update(task, completed=done, total=total)


def _storm_or_exit(catalog: Catalog, name: str):
    try:
        return catalog.storm(name)
    except StormNotFound as exc:
        raise fail(str(exc)) from None


def main() -> None:  # pragma: no cover - console entry point
    """Console entry point."""
    app()
