"""The one-command demo, step by step, each step skipped when its result already exists.

synthetic storm (+ a second for validation) → ingest → train segmentation → evaluate →
train regressor → precompute. Benchmarks reuse the same steps with their own data directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from iou_maps.errors import RegressorError
from iou_maps.models.pipeline import Progress, evaluate_storm, no_progress
from iou_maps.models.registry import regressor_dir, segmentation_dir
from iou_maps.storms.catalog import Catalog, Storm
from iou_maps.storms.ingest import ingest

Log = Callable[[str], None]


@dataclass
class DemoPlan:
    """What the demo builds: its storms (sizes, seeds), model name and training length."""

    data_dir: Path
    storm: str = "hatteras"
    val_storm: str = "hatteras-val"
    model: str = "demo"
    scenes: int = 24
    val_scenes: int = 16
    size: int = 1536
    seed: int = 1
    val_seed: int = 2
    seg_epochs: int | None = None  # None: the demo config's MAX_EPOCHS
    analysis_zoom: int = 18


def ensure_storm(
    data_dir: Path, name: str, *, seed: int, scenes: int, size: int,
    progress: Progress = no_progress, log: Log = print,
) -> Storm:  # fmt: skip
    """The storm, generated and ingested unless it is already in the catalog."""
    from iou_maps.storms.synthetic.generate import generate_storm

    catalog = Catalog(data_dir)
    if name in catalog.names():
        log(f"storm {name!r}: already ingested")
        return catalog.storm(name)
    source = data_dir / "sources" / name
    if not (source / ".complete").is_file():
        advance = progress(f"synth {name}", scenes)
        generate_storm(name, source, scenes=scenes, seed=seed, size=size, progress=advance)
        (source / ".complete").touch()  # an interrupted generation is redone, not half-used
    advance = progress(f"ingest {name}", scenes)
    report = ingest(data_dir, name, [source], on_scene=lambda _i, _s: advance(1))
    for skipped in report.skipped:
        log(f"skipped {skipped.path}: {skipped.reason}")
    log(f"storm {name!r}: {len(report.ingested)} scenes ingested")
    return catalog.storm(name)


def ensure_segmentation(
    data_dir: Path, model: str, storms: list[Storm], zoom: int, *, epochs: int | None = None,
    progress: Progress = no_progress, log: Log = print,
):  # fmt: skip
    """The segmentation model ``model``: loaded if it is there, else trained on ``storms``."""
    from iou_maps.models.pipeline import train_segmentation_on
    from iou_maps.models.registry import load_segmentation_model
    from iou_maps.models.segmentation.files import save_segmentation

    target = segmentation_dir(data_dir, model)
    if (target / "config.json").is_file():
        log(f"segmentation model {model!r}: already trained")
        return load_segmentation_model(data_dir, model)
    seg, history = train_segmentation_on(storms, zoom, epochs=epochs, progress=progress)
    save_segmentation(seg, target)
    log(f"segmentation model {model!r}: val accuracy {history['val_accuracy'][-1]:.3f}")
    return seg


def ensure_evaluation(
    data_dir: Path, model: str, storm: Storm, seg, zoom: int, *,
    progress: Progress = no_progress, log: Log = print,
) -> Path:  # fmt: skip
    """The `evaluate` table of ``storm``, recomputed when the segmentation model is newer."""
    out = data_dir / "evaluations" / model / f"{storm.name}.parquet"
    weights = segmentation_dir(data_dir, model) / "config.json"
    if out.is_file() and out.stat().st_mtime >= weights.stat().st_mtime:
        log(f"evaluation of {storm.name!r}: already done")
        return out
    result = evaluate_storm(storm, seg, zoom, progress=progress)
    result.write(out)
    t = result.table
    log(
        f"evaluation of {storm.name!r}: {len(t)} tiles, "
        f"true mIoU {t['miou'].mean():.3f} ± {t['miou'].std():.3f}"
    )
    return out


def ensure_regressor(
    data_dir: Path, model: str, seg, tables: list[Path], zoom: int, *,
    progress: Progress = no_progress, log: Log = print, seed: int = 0, kind: str = "softmax",
    segmentation: str | None = None,
):  # fmt: skip
    """The regressor ``model`` of ``kind`` on segmentation model ``seg`` (named
    ``segmentation``, default ``model``): loaded if it is there and usable, else trained."""
    from iou_maps.models.pipeline import regressor_metadata, regressor_training_set
    from iou_maps.models.registry import load_regressor_model
    from iou_maps.models.regressor.files import save_regressor
    from iou_maps.models.regressor.train import plot_report, train_regressor

    target = regressor_dir(data_dir, model)
    if (target / "metadata.json").is_file():
        try:
            reg = load_regressor_model(data_dir, model, "float32")  # the one it saves
        except RegressorError as exc:  # e.g. saved by an older version: the demo retrains
            log(f"metric regressor {model!r}: {exc}; training it again")
        else:
            if reg.kind == kind:
                log(f"metric regressor {model!r}: already trained (model id {reg.model_id})")
                return reg
            log(f"metric regressor {model!r} is of kind {reg.kind!r}, not {kind!r}: retraining")
    data = regressor_training_set(Catalog(data_dir), tables, seg.cfg.classes, progress=progress)
    advance = progress(f"train regressor on {len(data.images)} tiles", None)
    model_, report = train_regressor(
        seg, data.images, data.targets, data.scene_sets, seed=seed, kind=kind
    )
    advance(1)
    reg = save_regressor(
        model_, regressor_metadata(segmentation or model, seg, zoom, data, report), target
    )
    plot_report(report, target / "validation.png")
    m = report["scores"]["miou"]
    log(
        f"metric regressor {model!r} (model id {reg.model_id}): validation mIoU MAE "
        f"{m['mae']:.3f}, r {m['pearson_r']:.2f} (constant mean: {m['baseline_mae']:.3f})"
    )
    return reg


def prepare(plan: DemoPlan, *, progress: Progress = no_progress, log: Log = print):
    """Every step up to a trained regressor; returns (main storm, validation storm, regressor)."""
    storm = ensure_storm(
        plan.data_dir, plan.storm, seed=plan.seed, scenes=plan.scenes, size=plan.size,
        progress=progress, log=log,
    )  # fmt: skip
    val = ensure_storm(
        plan.data_dir, plan.val_storm, seed=plan.val_seed, scenes=plan.val_scenes,
        size=plan.size, progress=progress, log=log,
    )  # fmt: skip
    seg = ensure_segmentation(
        plan.data_dir, plan.model, [storm], plan.analysis_zoom, epochs=plan.seg_epochs,
        progress=progress, log=log,
    )  # fmt: skip
    tables = [
        ensure_evaluation(
            plan.data_dir, plan.model, s, seg, plan.analysis_zoom, progress=progress, log=log
        )  # fmt: skip
        for s in (storm, val)
    ]
    reg = ensure_regressor(
        plan.data_dir, plan.model, seg, tables, plan.analysis_zoom, progress=progress, log=log
    )
    return storm, val, reg
