"""The ``iou-maps`` command line (Typer + Rich)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import mercantile
import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from iou_maps.catalog import Catalog, InvalidStormName, StormNotFound, ingest, validate_storm_name
from iou_maps.config import Settings

app = typer.Typer(
    help="IoU Maps: where a segmentation model of post-storm imagery can be trusted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# TensorFlow's C++ start-up chatter buries the progress bars; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
console = Console(stderr=True)
out = Console()

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $IOU_MAPS_DATA_DIR or ./data)."),
]


def settings(data_dir: Path | None = None) -> Settings:
    s = Settings()
    if data_dir is not None:
        s.data_dir = data_dir
    return s


def progress_bar() -> Progress:
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


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def storm_name(value: str) -> str:
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
    from iou_maps.synthetic import FORMATS, generate_storm

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
def storms(data_dir: DataDir = None) -> None:
    """List the ingested storms."""
    s = settings(data_dir)
    summary = Catalog(s.data_dir).summary()
    if summary.empty:
        out.print(f"no storms under {s.storms_dir}")
        return
    table = Table(title=f"storms in {s.storms_dir}")
    for col in summary.columns:
        table.add_column(col)
    for row in summary.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    out.print(table)


Epochs = Annotated[int | None, typer.Option(min=1, help="Training epochs (default: config).")]


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
    from iou_maps.models import segmentation_dir, validate_model_name
    from iou_maps.segmentation import SegmentationConfig, demo_config, save_segmentation
    from iou_maps.segmentation import train_segmentation as train

    s = settings(data_dir)
    validate_model_name(out_name)
    cfg = (
        SegmentationConfig.from_json(config)
        if config
        else SegmentationConfig.from_dict(demo_config())
    )
    catalog = Catalog(s.data_dir)
    chip_sets = [
        _chips_with_progress(_storm_or_exit(catalog, name), s.analysis_zoom) for name in storms
    ]
    images = np.concatenate([c.images for c in chip_sets])
    labels = np.concatenate([c.labels for c in chip_sets])
    if not len(images):
        raise fail("no labelled analysis tiles in those storms")
    n_epochs = epochs or int(cfg.raw.get("MAX_EPOCHS", 10))
    out.print(f"training {cfg.model} on {len(images)} chips for {n_epochs} epochs")
    with progress_bar() as bar:
        task = bar.add_task("train-segmentation", total=n_epochs, rate="")
        cb = _EpochProgress(
            lambda logs: bar.update(
                task,
                advance=1,
                rate=f"loss {logs.get('loss', 0):.3f} val_acc {logs.get('val_accuracy', 0):.3f}",
            )
        )
        seg, history = train(images, labels, cfg, epochs=n_epochs, seed=seed, callbacks=[cb])
    target = segmentation_dir(s.data_dir, out_name)
    save_segmentation(seg, target)
    acc = history.get("val_accuracy", [float("nan")])[-1]
    out.print(f"saved segmentation model {out_name!r} to {target} (val accuracy {acc:.3f})")


class _EpochProgress:
    """A Keras callback advancing a Rich bar each epoch (Keras' own bar floods logs)."""

    def __new__(cls, on_epoch):
        import keras

        class _Cb(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                on_epoch(logs or {})

        return _Cb()


def _chips_with_progress(storm, zoom: int, labelled: bool = True):
    from iou_maps.evaluation import read_chips
    from iou_maps.grid import tiles_intersecting

    tiles = tiles_intersecting(storm.coverage, zoom)
    with progress_bar() as bar:
        task = bar.add_task(f"read {storm.name}", total=len(tiles), rate="")
        return read_chips(
            storm, zoom, labelled=labelled, tiles=tiles, progress=lambda n: bar.advance(task, n)
        )


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
    from iou_maps.evaluation import evaluate_chips, example_figure, scene_summary
    from iou_maps.models import ModelNotFound, load_segmentation_model

    s = settings(data_dir)
    st = _storm_or_exit(Catalog(s.data_dir), storm)
    try:
        seg = load_segmentation_model(s.data_dir, model)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    chips = _chips_with_progress(st, s.analysis_zoom)
    if not len(chips):
        raise fail(f"storm {storm!r} has no labelled analysis tiles")
    with console.status(f"segmenting {len(chips)} tiles"):
        table = evaluate_chips(chips, seg.predict)
    preds = table.attrs.pop("predictions")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.part")
    table.to_parquet(tmp, index=False)
    tmp.replace(out_file)
    summary = scene_summary(table)
    summary_path = out_file.with_name(f"{out_file.stem}_scenes.csv")
    summary.to_csv(summary_path, index=False)
    figure = out_file.with_name(f"{out_file.stem}_examples.png")
    example_figure(chips, preds, table, figure)
    out.print(
        f"{len(table)} tiles: mIoU mean {table['miou'].mean():.3f} std {table['miou'].std():.3f}"
        f"; wrote {out_file}, {summary_path}, {figure}"
    )


@app.command("train-regressor")
def train_regressor_cmd(
    segmentation: Annotated[str, typer.Option(help="Segmentation model name to cut.")],
    tables: Annotated[list[Path], typer.Option("--table", help="Tables from `evaluate`.")],
    out_name: Annotated[str, typer.Option("--out", help="Model name to write.")] = "demo",
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping).")] = 400,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Train the metric regressor on `evaluate` tables (validation split by scene)."""
    import geopandas as gpd

    from iou_maps.classes import METRICS
    from iou_maps.models import (
        ModelNotFound,
        load_segmentation_model,
        regressor_dir,
        validate_model_name,
    )  # fmt: skip
    from iou_maps.regressor import plot_report, save_regressor, train_regressor

    s = settings(data_dir)
    validate_model_name(out_name)
    try:
        seg = load_segmentation_model(s.data_dir, segmentation)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    catalog = Catalog(s.data_dir)
    images, targets, scene_sets, sources = [], [], [], []
    for path in tables:
        if not path.is_file():
            raise fail(f"no such table: {path}")
        table = gpd.read_parquet(path)
        for storm_name, part in table.groupby("storm"):
            st = _storm_or_exit(catalog, str(storm_name))
            tiles = [mercantile.Tile(int(r.x), int(r.y), int(r.z)) for r in part.itertuples()]
            chips = _chips_with_progress_tiles(st, tiles)
            index = {t: i for i, t in enumerate(chips.tiles)}
            rows = [i for i, t in enumerate(tiles) if t in index]
            images.append(chips.images[[index[tiles[i]] for i in rows]])
            targets.append(part[list(METRICS)].to_numpy(np.float32)[rows])
            scene_sets.extend(
                frozenset(f"{storm_name}/{x}" for x in str(v).split(",") if x)
                for v in part["scenes"].iloc[rows]
            )
            sources.append({"table": str(path), "storm": str(storm_name), "tiles": len(rows)})
    x, y = np.concatenate(images), np.concatenate(targets)
    with console.status(f"training regressor head on {len(x)} tiles"):
        model, report = train_regressor(seg, x, y, scene_sets, epochs=epochs, seed=seed)
    scores = report["scores"]
    metadata = {
        "segmentation": segmentation,
        "input_size": list(seg.cfg.target_size),
        "analysis_zoom": s.analysis_zoom,
        "preprocessing": "bilinear resize to input_size, then per-image standardisation "
        "(x - mean) / max(std, 1/sqrt(N)) as segmentation_gym",
        "training_data": sources,
        "validation": {
            k: report[k]
            for k in ("train_tiles", "val_tiles", "val_scenes", "epochs_run", "best_val_loss")
        },
        "validation_scores": scores,
    }
    reg = save_regressor(model, metadata, regressor_dir(s.data_dir, out_name))
    plot_path = regressor_dir(s.data_dir, out_name) / "validation.png"
    plot_report(report, plot_path)
    m = scores["miou"]
    out.print(
        f"regressor {out_name!r} (model id {reg.model_id}): validation mIoU MAE {m['mae']:.3f}, "
        f"r {m['pearson_r']:.2f}, constant-mean MAE {m['baseline_mae']:.3f}; report {plot_path}"
    )


def _chips_with_progress_tiles(storm, tiles):
    from iou_maps.evaluation import read_chips

    with progress_bar() as bar:
        task = bar.add_task(f"read {storm.name}", total=len(tiles), rate="")
        return read_chips(
            storm, tiles[0].z if tiles else 18, labelled=False, tiles=tiles,
            progress=lambda n: bar.advance(task, n),
        )  # fmt: skip


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
    from iou_maps.models import ModelNotFound, load_regressor_model
    from iou_maps.prediction import predict_table, write_exports

    s = settings(data_dir)
    st = _storm_or_exit(Catalog(s.data_dir), storm)
    try:
        reg = load_regressor_model(s.data_dir, model)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    chips = _chips_with_progress(st, reg.analysis_zoom, labelled=False)
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
    model: Annotated[
        str | None, typer.Option(help="Model name (default: $IOU_MAPS_MODEL).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Fill the cache for a storm: every analysis tile, then the lower-zoom aggregates.

    Resumable: a re-run skips what is cached for this model. Exit status 1 if any tile failed.
    """
    from iou_maps.engine import open_engine
    from iou_maps.models import ModelNotFound
    from iou_maps.precompute import CacheUnavailable, precompute

    s = settings(data_dir)
    if model:
        s.model = model
    box = _parse_bbox(bbox)
    catalog = Catalog(s.data_dir)
    _storm_or_exit(catalog, storm)
    try:
        engine = open_engine(s)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"precompute {storm}", total=None, rate="")

        def on_progress(done: int, total: int) -> None:
            rate = engine.tiles_computed / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{rate:.1f} tiles/s")

        try:
            summary = precompute(
                engine, storm, bbox=box, batch_size=batch_size, workers=workers,
                refresh=refresh, progress=on_progress,
            )  # fmt: skip
        except CacheUnavailable as exc:
            raise fail(str(exc)) from None
    table = Table(title=f"precompute {storm} (model {summary.model_id})", show_header=False)
    for name, value in (
        ("analysis tiles", summary.total),
        ("computed", summary.computed),
        ("already cached", summary.already_cached),
        ("without imagery", summary.no_imagery),
        ("failed", summary.failed),
        ("aggregates written", summary.aggregated),
        ("time", f"{summary.seconds:.1f} s"),
        ("tiles/s", f"{summary.tiles_per_second:.1f}"),
    ):
        table.add_row(name, str(value))
    out.print(table)
    for line in summary.failures[:20]:
        console.print(f"[red]failed[/red] {line}", soft_wrap=True, markup=True, highlight=False)
    if summary.failed:
        raise fail(f"{summary.failed} tile(s) failed; the others are stored", 1)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default: $IOU_MAPS_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: $IOU_MAPS_PORT or 8000).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the tile service (imagery + metric tiles, point lookup, viewer at /)."""
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
    uvicorn.run("service.app:app_from_env", factory=True, host=s.host, port=s.port)


def _storm_or_exit(catalog: Catalog, name: str):
    try:
        return catalog.storm(name)
    except StormNotFound as exc:
        raise fail(str(exc)) from None


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # python -m iou_maps.cli
    app()
