"""Metric regressor accuracy on a held-out storm of another seed (demo-size models).

The segmentation model is trained on storm seed1; the regressor on the `evaluate` tables of
storms seed1, seed2 and seed4 to seed12 (validation split by scene inside them; seed1's
numbers alone make an over-confident regressor, since the segmentation model saw those tiles,
and every extra storm shows the head more of how the model's errors shift between storms);
both are scored on storm seed3, which neither has seen. Both regressor kinds are trained on
the same tables and scored on the same held-out tiles: ``softmax`` (the default) and
``encoder`` (the seed design); each one's speed is measured in a fresh inference process on
the held-out chips. Prints per-metric MAE, Pearson r and the constant-mean baseline's MAE;
last line `miou_mae=<f> miou_r=<f> baseline_mae=<f> encoder_miou_mae=<f> encoder_miou_r=<f>
encoder_tiles_s=<f> softmax_tiles_s=<f>` (the first three for the default kind).
Shares bench/out/pipeline with segmentation_spread.py (--fresh starts over).
"""

from __future__ import annotations

import argparse

from _common import (
    HEAD_STORMS,
    OUT,
    log,
    pipeline_data_dir,
    pipeline_segmentation,
    pipeline_storm,
    predict_rate,
    progress,
)

from iou_maps.cli.demo import ensure_evaluation, ensure_regressor
from iou_maps.models.classes import DEMO_CLASSES
from iou_maps.models.metrics import column_means
from iou_maps.models.pipeline import regressor_training_set
from iou_maps.models.registry import regressor_dir
from iou_maps.models.regressor.train import evaluation_scores
from iou_maps.storms.catalog import Catalog


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=OUT / "pipeline", help="working data directory")
    p.add_argument("--fresh", action="store_true", help="delete the working directory first")
    p.add_argument("--seconds", type=float, default=5.0, help="time of each speed measurement")
    a = p.parse_args()
    import geopandas as gpd
    import numpy as np

    data = pipeline_data_dir(a.data_dir, a.fresh)
    with progress() as pr:
        s1, seg = pipeline_segmentation(data, pr)
        storms = {1: s1} | {s: pipeline_storm(data, s, pr) for s in (*HEAD_STORMS, 3) if s != 1}
        tables = {
            s: ensure_evaluation(data, "bench", storm, seg, 18, progress=pr, log=log)
            for s, storm in storms.items()
        }
        head_tables = [tables[s] for s in HEAD_STORMS]
        regs = {
            kind: ensure_regressor(
                data,
                name,
                seg,
                head_tables,
                18,
                progress=pr,
                log=log,
                kind=kind,
                segmentation="bench",
            )  # fmt: skip
            for kind, name in (("softmax", "bench"), ("encoder", "bench_encoder"))
        }
        test = regressor_training_set(Catalog(data), [tables[3]], DEMO_CLASSES, progress=pr)
    train_targets = np.concatenate(
        [gpd.read_parquet(t)[list(DEMO_CLASSES.metrics)].to_numpy(np.float32) for t in head_tables]
    )
    baseline = column_means(train_targets)
    print(f"held-out storm seed3: {len(test.images)} tiles")
    figures: dict[str, float] = {}
    for kind, reg in regs.items():
        pred = np.concatenate(
            [reg.predict(test.images[i : i + 64]) for i in range(0, len(test.images), 64)]
        )
        scores = evaluation_scores(test.targets, pred, baseline, DEMO_CLASSES.metrics)
        name = "bench" if kind == "softmax" else "bench_encoder"
        rate = predict_rate(regressor_dir(data, name), test.images, seconds=a.seconds)
        print(f"\n{kind} regressor (model id {reg.model_id}): {rate:.1f} tiles/s at batch 32")
        print(f"{'metric':16} {'n':>5} {'MAE':>7} {'r':>7} {'baseline MAE':>13}")
        for metric in DEMO_CLASSES.metrics:
            sc = scores[metric]
            print(
                f"{metric:16} {sc['n']:5d} {sc['mae']:7.4f} {sc['pearson_r']:7.3f} "
                f"{sc['baseline_mae']:13.4f}"
            )
        m = scores["miou"]
        prefix = "" if kind == "softmax" else f"{kind}_"
        figures[f"{prefix}miou_mae"] = m["mae"]
        figures[f"{prefix}miou_r"] = m["pearson_r"]
        if kind == "softmax":
            figures["baseline_mae"] = m["baseline_mae"]
        figures[f"{kind}_tiles_s"] = rate
    order = ["miou_mae", "miou_r", "baseline_mae", "encoder_miou_mae", "encoder_miou_r",
             "encoder_tiles_s", "softmax_tiles_s"]  # fmt: skip
    print(" ".join(f"{k}={figures[k]:.4f}" if "tiles_s" not in k else f"{k}={figures[k]:.1f}"
                   for k in order))  # fmt: skip


if __name__ == "__main__":
    main()
