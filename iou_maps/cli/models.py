"""The model commands: ``train-segmentation``, ``evaluate``, ``train-regressor`` and
``predict``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from iou_maps.cli.output import (
    DataDir,
    console,
    fail,
    out,
    progress_bar,
    rich_progress,
    settings,
    storm_name,
    storm_or_exit,
)
from iou_maps.errors import BadClassSet, ModelFilesMissing, ModelNotFound, StormNotFound
from iou_maps.models import runtime
from iou_maps.models.classes import ClassSet
from iou_maps.models.gym_files import find_model_files, model_classes, write_class_names
from iou_maps.storms.catalog import Catalog

if TYPE_CHECKING:
    from iou_maps.models.segmentation.model import SegmentationModel


class RegressorKind(StrEnum):
    """The regressor designs of iou_maps.models.regressor (KINDS)."""

    softmax = "softmax"
    encoder = "encoder"


Epochs = Annotated[int | None, typer.Option(min=1, help="Training epochs (default: config).")]
ClassNames = Annotated[
    str | None,
    typer.Option(
        "--classes",
        help="The model's class names in class-id order, comma-separated (e.g. water,sand), "
        "where its config does not name them: written to classes.txt beside its config.",
    ),
]


def _class_set(text: str | None) -> ClassSet | None:
    """The ``--classes`` option's class set (a usage error if the names are not valid)."""
    if text is None:
        return None
    try:
        return ClassSet.parse(text)
    except BadClassSet as exc:
        raise typer.BadParameter(f"--classes: {exc}") from None


def _load_seg(data_dir: Path, name: str) -> SegmentationModel:
    from iou_maps.models.registry import load_segmentation_model

    try:
        return load_segmentation_model(data_dir, name)
    except (ModelNotFound, BadClassSet) as exc:
        raise fail(str(exc)) from None


def _name_classes(data_dir: Path, name: str, classes: ClassSet) -> None:
    """Write ``classes`` beside the config of segmentation model ``name`` (a usage error if
    its config has another class count), reading the config only (no TensorFlow)."""
    from iou_maps.models.registry import segmentation_dir

    directory = segmentation_dir(data_dir, name)
    try:
        config, _ = find_model_files(directory)
        nclasses = len(model_classes(directory).names)
        ClassSet.of(classes.names, nclasses, f"--classes for {config}")
    except ModelFilesMissing as exc:
        raise fail(str(exc)) from None
    except BadClassSet as exc:
        raise typer.BadParameter(str(exc)) from None
    write_class_names(directory, classes.names)


def train_segmentation_cmd(
    storms: Annotated[list[str], typer.Argument(help="Storms with labels to train on.")],
    out_name: Annotated[str, typer.Option("--out", help="Model name to write.")] = "demo",
    config: Annotated[
        Path | None, typer.Option(help="segmentation_gym config JSON (default: demo config).")
    ] = None,
    epochs: Epochs = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    classes: ClassNames = None,
    data_dir: DataDir = None,
) -> None:
    """Train a segmentation_gym-compatible UNet on the storms' labelled analysis tiles."""
    from iou_maps.models.pipeline import train_segmentation_on
    from iou_maps.models.registry import segmentation_dir, validate_model_name
    from iou_maps.models.segmentation.files import save_segmentation

    s = settings(data_dir)
    validate_model_name(out_name)
    catalog = Catalog(s.data_dir)
    chosen = [storm_or_exit(catalog, storm_name(n)) for n in storms]
    names = _class_set(classes)
    with progress_bar() as bar:
        try:
            seg, history = train_segmentation_on(
                chosen, s.analysis_zoom, config=config, epochs=epochs, seed=seed,
                progress=rich_progress(bar), classes=names,
            )  # fmt: skip
        except ValueError as exc:
            raise fail(str(exc)) from None
    target = segmentation_dir(s.data_dir, out_name)
    save_segmentation(seg, target)
    acc = history.get("val_accuracy", [float("nan")])[-1]
    out.print(f"saved segmentation model {out_name!r} to {target} (val accuracy {acc:.3f})")


def evaluate(
    storm: Annotated[str, typer.Argument(help="Storm with labels.", callback=storm_name)],
    model: Annotated[str, typer.Option(help="Model name (its segmentation part).")] = "demo",
    out_file: Annotated[Path, typer.Option("--out", help="GeoParquet table to write.")] = Path(
        "evaluation.parquet"
    ),
    classes: ClassNames = None,
    data_dir: DataDir = None,
) -> None:
    """True metrics of the segmentation model on every labelled analysis tile of a storm.

    Writes the GeoParquet table, a per-scene summary CSV beside it (``*_scenes.csv``) and the
    "model example output" figure (``*_examples.png``).
    """
    s = settings(data_dir)
    st = storm_or_exit(Catalog(s.data_dir), storm)
    names = _class_set(classes)
    if names is not None:
        _name_classes(s.data_dir, model, names)
    runtime.inference_process()
    from iou_maps.models.pipeline import evaluate_storm

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
    classes: ClassNames = None,
    precisions: Annotated[
        str | None,
        typer.Option(
            help="Precisions to prepare, comma-separated (float32 always): the heads of each are "
            "trained on its network's features. Default: float32, and bfloat16 where this "
            "processor has bfloat16 units (AMX, AVX512-BF16)."
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Train the metric regressor on `evaluate` tables (validation split by scene)."""
    from iou_maps.models.pipeline import regressor_metadata, regressor_training_set
    from iou_maps.models.precision import PRECISIONS, check_precision, machine_precisions
    from iou_maps.models.registry import regressor_dir, save_regressors, validate_model_name
    from iou_maps.models.regressor.train import plot_report, train_regressor

    s = settings(data_dir)
    validate_model_name(out_name)
    names = _class_set(classes)
    if names is not None:
        _name_classes(s.data_dir, segmentation, names)
    wanted = machine_precisions() if precisions is None else precisions.split(",")
    try:
        prepare = [p for p in PRECISIONS if p in {check_precision(w.strip()) for w in wanted}]
    except ValueError as exc:
        raise fail(str(exc)) from None
    prepare = [PRECISIONS[0], *(p for p in prepare if p != PRECISIONS[0])]
    seg = _load_seg(s.data_dir, segmentation)
    for path in tables:
        if not path.is_file():
            raise fail(f"no such table: {path}")
    with progress_bar() as bar:
        try:
            data = regressor_training_set(
                Catalog(s.data_dir), tables, seg.cfg.classes, progress=rich_progress(bar)
            )
        except (StormNotFound, ValueError) as exc:
            raise fail(str(exc)) from None
    trained, reports = [], []
    for precision in prepare:
        with console.status(
            f"training the {precision} regressor heads on {len(data.images)} tiles"
        ):
            model, report = train_regressor(
                seg, data.images, data.targets, data.scene_sets, epochs=epochs, seed=seed,
                kind=kind.value, precision=precision,
            )  # fmt: skip
        trained.append(
            (model, regressor_metadata(segmentation, seg, s.analysis_zoom, data, report))
        )
        reports.append(report)
    for reg, report in zip(save_regressors(s.data_dir, out_name, trained), reports, strict=True):
        target = regressor_dir(s.data_dir, out_name, reg.precision)
        plot_report(report, target / "validation.png")
        m = report["scores"]["miou"]
        out.print(
            f"{reg.kind} regressor {out_name!r}, {reg.precision} (model id {reg.model_id}): "
            f"validation mIoU MAE {m['mae']:.3f}, "
            f"r {m['pearson_r']:.2f}, constant-mean MAE {m['baseline_mae']:.3f}; "
            f"report {target / 'validation.png'}"
        )
    out.print(f"prepared precisions: {', '.join(prepare)}")


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
    st = storm_or_exit(Catalog(s.data_dir), storm)
    try:
        reg = load_regressor_model(s.data_dir, model)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    with progress_bar() as bar:
        chips = storm_chips(st, reg.analysis_zoom, labelled=False, progress=rich_progress(bar))
    with console.status(f"predicting {len(chips)} tiles"):
        table = predict_table(chips, reg.predict, reg.model_id, reg.classes)
    paths = write_exports(table, out_file)
    out.print(
        f"{len(table)} tiles, predicted mIoU mean {table['miou'].mean():.3f}; wrote "
        + ", ".join(str(p) for p in paths)
    )
