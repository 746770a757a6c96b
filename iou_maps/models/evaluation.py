"""Ground truth: labelled analysis-tile chips, true metrics of a segmentation model, figures.

What the seed's MetricsForAll and Model_example-Output notebooks did by hand, per analysis
tile of a storm: run the segmentation model, compare with the label, and keep a GeoParquet
table (tile, geometry, scenes, the model's metrics, class fractions) that trains the regressor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import mercantile
import numpy as np
import pandas as pd
import shapely
from mercantile import Tile

from iou_maps.errors import LabelClassError, TrainingDataError
from iou_maps.models.classes import NODATA_LABEL, ClassSet
from iou_maps.models.metrics import class_fractions, metric_vectors
from iou_maps.storms.catalog import Storm
from iou_maps.storms.grid import tile_polygons, tiles_intersecting
from iou_maps.storms.grid_reads import pixel_interleaved
from iou_maps.storms.mosaic import StormBackend, read_label_tile, read_tile

#: Tiles with less labelled imagery than this are left out of evaluation and training.
MIN_LABELLED_FRACTION = 0.25


@dataclass
class ChipSet:
    """Analysis-tile chips of a storm: imagery, labels and the scenes under each tile."""

    storm: str
    tiles: list[Tile]
    images: np.ndarray  # (N, 256, 256, 3) uint8, 0 outside imagery
    labels: np.ndarray | None  # (N, 256, 256) uint8, NODATA_LABEL where unlabelled
    scenes: list[frozenset[str]]
    primary_scene: list[str]

    def __len__(self) -> int:
        return len(self.tiles)


def tile_scenes(storm: Storm, tiles: Sequence[Tile]) -> tuple[list[frozenset[str]], list[str]]:
    """For each tile: every scene it overlaps, and the one covering most of it."""
    fp = storm.footprints
    boxes = tile_polygons(list(tiles))
    sets: list[frozenset[str]] = []
    primary: list[str] = []
    for box in boxes:
        hits = fp.iloc[np.sort(fp.sindex.query(box, predicate="intersects"))]
        ids = list(hits["scene_id"])
        sets.append(frozenset(ids))
        if ids:
            areas = shapely.area(shapely.intersection(hits.geometry.values, box))
            primary.append(ids[int(np.argmax(areas))])
        else:
            primary.append("")
    return sets, primary


def check_label_ids(label: np.ndarray, nclasses: int, labels: StormBackend, tile: Tile) -> None:
    """LabelClassError naming the label rasters under ``tile`` if ``label`` holds a class id
    that is neither one of the model's ``nclasses`` classes nor ``NODATA_LABEL``."""
    ids = np.unique(label)
    bad = ids[(ids >= nclasses) & (ids != NODATA_LABEL)]
    if not len(bad):
        return
    fp = labels.input.footprints
    hits = fp.iloc[np.sort(fp.sindex.query(tile_polygons([tile])[0], predicate="intersects"))]
    files = sorted(str(p) for p in hits["label_path"].dropna())
    raise LabelClassError(
        f"label raster(s) {', '.join(files) or '?'} hold class ids {bad.tolist()} outside the "
        f"model's {nclasses} classes (0..{nclasses - 1}, nodata {NODATA_LABEL})"
    )


def read_chip(
    images: StormBackend, labels: StormBackend | None, tile: Tile, nclasses: int | None = None
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The chip of ``tile`` (zeros outside imagery) and, with a ``labels`` backend, its label
    (NODATA_LABEL where unlabelled or without imagery); None without imagery, or with labels
    asked for where less than ``MIN_LABELLED_FRACTION`` of the tile is labelled.

    What ``evaluate`` reads for each tile, and the true metric layers too: one reading, one
    set of numbers. ``nclasses``: the model's class count, to refuse labels of other ids
    (``check_label_ids``).
    """
    img = read_tile(images, tile.x, tile.y, tile.z)
    if img is None:
        return None
    mask = np.asarray(img.mask).astype(bool)
    rgb = pixel_interleaved(img.data)
    rgb[~mask] = 0
    if labels is None:
        return rgb, None
    lab = read_label_tile(labels, tile.x, tile.y, tile.z)
    if lab is None:
        return None
    lab[~mask] = NODATA_LABEL
    if nclasses is not None:
        check_label_ids(lab, nclasses, labels, tile)
    if (lab != NODATA_LABEL).mean() < MIN_LABELLED_FRACTION:
        return None
    return rgb, lab


def true_metrics(
    images: np.ndarray,
    labels: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    nclasses: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(metric vectors (N, nclasses + 2), predicted class ids (N, H, W)) of a segmentation
    model's ``predict`` on labelled chips; unlabelled pixels are left out of both."""
    preds = predict(images) if len(images) else np.zeros(labels.shape, np.uint8)
    preds = np.asarray(preds).copy()
    preds[labels == NODATA_LABEL] = NODATA_LABEL
    return metric_vectors(labels, preds, nclasses), preds


def read_chips(
    storm: Storm,
    zoom: int,
    *,
    labelled: bool = True,
    tiles: Sequence[Tile] | None = None,
    progress: Callable[[int], None] | None = None,
    threads: int = 4,
    nclasses: int | None = None,
) -> ChipSet:
    """Chips of the storm's analysis tiles (with labels: only tiles that are well labelled;
    ``nclasses``: labels must hold ids of that many classes)."""
    if tiles is None:
        tiles = tiles_intersecting(storm.coverage, zoom)
    images_backend = StormBackend(storm)
    labels_backend = StormBackend(storm, labels=True) if labelled else None

    def one(t: Tile) -> tuple[Tile, np.ndarray, np.ndarray | None] | None:
        got = read_chip(images_backend, labels_backend, t, nclasses)
        return None if got is None else (t, *got)

    kept: list[tuple[Tile, np.ndarray, np.ndarray | None]] = []
    with ThreadPoolExecutor(threads) as pool:
        for res in pool.map(one, tiles):
            if progress:
                progress(1)
            if res is not None:
                kept.append(res)
    size = 256
    images = np.stack([k[1] for k in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    labels: np.ndarray | None = None
    if labelled:
        labels = (
            np.stack([k[2] for k in kept if k[2] is not None])
            if kept
            else np.zeros((0, size, size), np.uint8)
        )
    kept_tiles = [k[0] for k in kept]
    sets, primary = tile_scenes(storm, kept_tiles)
    return ChipSet(storm.name, kept_tiles, images, labels, sets, primary)


def tiles_frame(storm_name: str, tiles: Sequence[Tile], scenes, primary) -> dict[str, list]:
    """The tile columns shared by evaluate and predict tables."""
    return {
        "storm": [storm_name] * len(tiles),
        "z": [t.z for t in tiles],
        "x": [t.x for t in tiles],
        "y": [t.y for t in tiles],
        "scene": list(primary),
        "scenes": [",".join(sorted(s)) for s in scenes],
    }


def tile_geometries(tiles: Sequence[Tile]) -> np.ndarray:
    """Shapely boxes (EPSG:4326) of the tiles."""
    return tile_polygons(list(tiles))


def evaluate_chips(
    chips: ChipSet, predict: Callable[[np.ndarray], np.ndarray], classes: ClassSet
) -> gpd.GeoDataFrame:
    """True metrics of a segmentation model of ``classes`` on labelled chips → GeoParquet-ready
    table (its class set in ``attrs["classes"]``)."""
    if chips.labels is None:
        raise TrainingDataError("evaluation needs labelled chips")
    vectors, preds = true_metrics(chips.images, chips.labels, predict, classes.nclasses)
    lab_frac = class_fractions(chips.labels, classes.nclasses)
    pred_frac = class_fractions(preds, classes.nclasses)
    cols = tiles_frame(chips.storm, chips.tiles, chips.scenes, chips.primary_scene)
    for i, m in enumerate(classes.metrics):
        cols[m] = vectors[:, i].tolist()
    for i, c in enumerate(classes.names):
        cols[f"label_frac_{c}"] = lab_frac[:, i].tolist()
    for i, c in enumerate(classes.names):
        cols[f"pred_frac_{c}"] = pred_frac[:, i].tolist()
    cols["labelled_fraction"] = (chips.labels != NODATA_LABEL).mean(axis=(1, 2)).tolist()
    gdf = gpd.GeoDataFrame(cols, geometry=tile_geometries(chips.tiles), crs=4326)
    gdf.attrs["predictions"] = preds
    return gdf


def scene_summary(table: pd.DataFrame, classes: ClassSet) -> pd.DataFrame:
    """Per scene (the tile's main scene): tile count and mean / std of each metric."""
    agg = table.groupby("scene")[list(classes.metrics)].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    agg.insert(0, "tiles", table.groupby("scene").size())
    return agg.reset_index()


def example_figure(
    chips: ChipSet,
    preds: np.ndarray,
    table: pd.DataFrame,
    path: Path,
    classes: ClassSet,
    n: int = 6,
) -> None:
    """Image / label / prediction / per-class IoU for a few tiles, from worst to best mIoU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    if not len(chips):
        raise TrainingDataError("no labelled tiles to draw")
    order = np.argsort(table["miou"].to_numpy())
    picks = order[np.linspace(0, len(order) - 1, min(n, len(order))).astype(int)]
    colors = [np.array(c) / 255 for c in classes.colors]
    cmap = ListedColormap(colors)
    top = classes.nclasses - 1
    fig, axes = plt.subplots(len(picks), 4, figsize=(12, 3 * len(picks)), squeeze=False)
    for row, i in zip(axes, picks, strict=True):
        assert chips.labels is not None  # a labelled chip set
        label = np.ma.masked_equal(chips.labels[i], NODATA_LABEL)
        pred = np.ma.masked_array(preds[i], mask=label.mask)
        row[0].imshow(chips.images[i])
        row[1].imshow(label, cmap=cmap, vmin=0, vmax=top, interpolation="nearest")
        row[2].imshow(pred, cmap=cmap, vmin=0, vmax=top, interpolation="nearest")
        t = chips.tiles[i]
        row[0].set_title(f"{t.z}/{t.x}/{t.y}", fontsize=9)
        row[1].set_title("label", fontsize=9)
        row[2].set_title(f"prediction (mIoU {table['miou'].iloc[i]:.2f})", fontsize=9)
        ious = [table[f"iou_{c}"].iloc[i] for c in classes.names]
        row[3].bar(range(classes.nclasses), np.nan_to_num(ious), color=colors)
        row[3].set_xticks(range(classes.nclasses), classes.names, fontsize=8)
        row[3].set_ylim(0, 1)
        row[3].set_title("IoU per class (absent: no bar)", fontsize=9)
        for ax in row[:3]:
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def tile_center(t: Tile) -> tuple[float, float]:
    """Longitude and latitude of the tile's centre."""
    b = mercantile.bounds(t)
    return (b.west + b.east) / 2, (b.south + b.north) / 2
