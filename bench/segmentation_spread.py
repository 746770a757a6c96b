"""Train the demo-size segmentation model on storm seed1, evaluate it on storm seed2.

Prints the per-scene summary and, last, `miou_mean=<f> miou_std=<f>` (per analysis tile).
Storms and the model are kept under bench/out/pipeline and reused (--fresh starts over).
"""

from __future__ import annotations

import argparse

from _common import OUT, log, pipeline_data_dir, pipeline_segmentation, pipeline_storm, progress

from iou_maps.cli.demo import ensure_evaluation
from iou_maps.models.classes import DEMO_CLASSES
from iou_maps.models.evaluation import scene_summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=OUT / "pipeline", help="working data directory")
    p.add_argument("--fresh", action="store_true", help="delete the working directory first")
    a = p.parse_args()
    import geopandas as gpd

    data = pipeline_data_dir(a.data_dir, a.fresh)
    with progress() as pr:
        _train, seg = pipeline_segmentation(data, pr)
        other = pipeline_storm(data, 2, pr)
        table_path = ensure_evaluation(data, "bench", other, seg, 18, progress=pr, log=log)
    table = gpd.read_parquet(table_path)
    summary = scene_summary(table, DEMO_CLASSES)
    print(summary[["scene", "tiles", "miou_mean", "miou_std"]].to_string(index=False))
    print(f"tiles={len(table)} figure={table_path.with_name(table_path.stem + '_examples.png')}")
    print(f"miou_mean={table['miou'].mean():.4f} miou_std={table['miou'].std():.4f}")


if __name__ == "__main__":
    main()
