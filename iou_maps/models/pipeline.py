"""The model pipeline behind the maps, as reusable steps (CLI, demo and benchmarks share them).

segmentation model → ground-truth metrics on labelled tiles → metric regressor → predictions.
Each step takes a ``Progress`` factory so callers choose how to show long work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from mercantile import Tile

from iou_maps.errors import ClassSetMismatch, TrainingDataError
from iou_maps.models.classes import ClassSet
from iou_maps.models.evaluation import (
    ChipSet,
    evaluate_chips,
    example_figure,
    read_chips,
    scene_summary,
)
from iou_maps.storms.catalog import Catalog, Storm
from iou_maps.storms.grid import tiles_intersecting

#: progress(description, total) → advance(n): how a step reports long work.
Progress = Callable[[str, int | None], Callable[[int], None]]


def no_progress(_description: str, _total: int | None) -> Callable[[int], None]:
    """A Progress factory that draws nothing."""
    return lambda _n: None


def storm_chips(
    storm: Storm,
    zoom: int,
    *,
    labelled: bool = True,
    tiles: Sequence[Tile] | None = None,
    progress: Progress = no_progress,
    nclasses: int | None = None,
) -> ChipSet:
    """Analysis-tile chips of a storm, reporting each tile read (``nclasses``: labels must
    hold ids of that many classes)."""
    tiles = list(tiles) if tiles is not None else tiles_intersecting(storm.coverage, zoom)
    advance = progress(f"read {storm.name}", len(tiles))
    return read_chips(
        storm, zoom, labelled=labelled, tiles=tiles, progress=advance, nclasses=nclasses
    )


# --------------------------------------------------------------------------- segmentation


def train_segmentation_on(
    storms: Sequence[Storm],
    zoom: int,
    *,
    config: dict[str, Any] | Path | None = None,
    epochs: int | None = None,
    seed: int = 0,
    progress: Progress = no_progress,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    classes: ClassSet | None = None,
):
    """Train a segmentation model on the storms' labelled analysis tiles (``classes``: its
    class names, where the config does not give them)."""
    import keras

    from iou_maps.models.segmentation.config import SegmentationConfig, demo_config
    from iou_maps.models.segmentation.train import train_segmentation

    if isinstance(config, Path):
        cfg = SegmentationConfig.from_json(config)
    else:
        cfg = SegmentationConfig.from_dict(config or demo_config())
    if classes is not None:
        cfg = cfg.with_classes(classes)
    chip_sets = [storm_chips(s, zoom, progress=progress, nclasses=cfg.nclasses) for s in storms]
    images = np.concatenate([c.images for c in chip_sets])
    labels = np.concatenate([c.labels for c in chip_sets if c.labels is not None])
    if not len(images):
        raise TrainingDataError("no labelled analysis tiles in those storms")
    n_epochs = epochs or int(cfg.raw.get("MAX_EPOCHS", 10))
    advance = progress(f"train {cfg.model} on {len(images)} chips", n_epochs)

    class EpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            advance(1)
            if on_epoch:
                on_epoch(logs or {})

    return train_segmentation(
        images, labels, cfg, epochs=n_epochs, seed=seed, callbacks=[EpochEnd()]
    )


# --------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """An ``evaluate`` result: the per-tile table, the chips and the predicted class maps."""

    table: gpd.GeoDataFrame
    chips: ChipSet
    predictions: np.ndarray
    classes: ClassSet

    def write(self, out: Path) -> list[Path]:
        """Table (GeoParquet), per-scene summary (CSV) and example figure (PNG)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        self.table.to_parquet(tmp, index=False)
        tmp.replace(out)
        summary = out.with_name(f"{out.stem}_scenes.csv")
        scene_summary(self.table, self.classes).to_csv(summary, index=False)
        figure = out.with_name(f"{out.stem}_examples.png")
        example_figure(self.chips, self.predictions, self.table, figure, self.classes)
        return [out, summary, figure]


def evaluate_storm(storm: Storm, seg, zoom: int, *, progress: Progress = no_progress) -> Evaluation:
    """True metrics of ``seg`` on every labelled analysis tile of ``storm``."""
    classes = seg.cfg.classes
    chips = storm_chips(storm, zoom, progress=progress, nclasses=classes.nclasses)
    if not len(chips):
        raise TrainingDataError(f"storm {storm.name!r} has no labelled analysis tiles")
    table = evaluate_chips(chips, seg.predict, classes)
    preds = table.attrs.pop("predictions")
    return Evaluation(table, chips, preds, classes)


# --------------------------------------------------------------------------- regressor


@dataclass
class TrainingSet:
    """The regressor's training data: chips, target metric vectors, the scenes of each tile,
    and where they came from."""

    images: np.ndarray
    targets: np.ndarray
    scene_sets: list[frozenset[str]]
    sources: list[dict[str, Any]]


def check_table_classes(table: gpd.GeoDataFrame, classes: ClassSet, where: str) -> None:
    """ClassSetMismatch unless an `evaluate` table's IoU columns are those of ``classes``."""
    have = [c for c in table.columns if str(c).startswith("iou_")]
    want = list(classes.metrics[:-2])
    if have != want:
        raise ClassSetMismatch(
            f"table {where} holds metrics {have} but the segmentation model's classes give "
            f"{want}: it was evaluated with another model"
        )


def regressor_training_set(
    catalog: Catalog,
    tables: Sequence[gpd.GeoDataFrame | Path],
    classes: ClassSet,
    *,
    progress: Progress = no_progress,
) -> TrainingSet:
    """Chips and target vectors for the tiles of `evaluate` tables (re-read from the storms),
    which must hold the metrics of ``classes``."""
    images: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    scene_sets: list[frozenset[str]] = []
    sources: list[dict[str, Any]] = []
    for src in tables:
        table = gpd.read_parquet(src) if isinstance(src, Path) else src
        check_table_classes(table, classes, str(src) if isinstance(src, Path) else "given")
        for storm_name, part in table.groupby("storm"):
            storm = catalog.storm(str(storm_name))
            tiles = [Tile(int(r.x), int(r.y), int(r.z)) for r in part.itertuples()]
            chips = storm_chips(storm, tiles[0].z, labelled=False, tiles=tiles, progress=progress)
            index = {t: i for i, t in enumerate(chips.tiles)}
            rows = [i for i, t in enumerate(tiles) if t in index]
            images.append(chips.images[[index[tiles[i]] for i in rows]])
            targets.append(part[list(classes.metrics)].to_numpy(np.float32)[rows])
            scene_sets.extend(
                frozenset(f"{storm_name}/{x}" for x in str(v).split(",") if x)
                for v in part["scenes"].iloc[rows]
            )
            sources.append(
                {"table": str(src) if isinstance(src, Path) else "", "storm": str(storm_name),
                 "tiles": len(rows)}
            )  # fmt: skip
    if not images:
        raise TrainingDataError("the tables hold no tiles")
    return TrainingSet(np.concatenate(images), np.concatenate(targets), scene_sets, sources)


def regressor_metadata(
    seg_name: str, seg, zoom: int, data: TrainingSet, report: dict[str, Any]
) -> dict[str, Any]:
    """What `metadata.json` records besides the names and the model id."""
    return {
        "segmentation": seg_name,
        "classes": list(seg.cfg.classes.names),
        "input_size": list(seg.cfg.target_size),
        "analysis_zoom": zoom,
        "precision": report.get("precision", "float32"),
        "preprocessing": "antialiased bilinear resize of the 256x256 RGB chip to input_size "
        "(through uint8), then segmentation_gym's per-image standardisation "
        "(x - mean) / max(std, 1/sqrt(H*W)), as the segmentation model's own prediction",
        "training_data": data.sources,
        "validation": {
            k: report[k]
            for k in (
                "train_tiles",
                "val_tiles",
                "val_scenes",
                "heads",
                "epochs_run",
                "best_val_loss",
            )
        },
        "validation_scores": report["scores"],
        # The calibration of its intervals (iou_maps.models.intervals): part of the model id.
        "intervals": report["calibration"],
    }
