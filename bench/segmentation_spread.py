"""Train the demo-size segmentation model on one synthetic storm, evaluate it on another seed.

Prints the per-scene summary and, last, `miou_mean=<f> miou_std=<f>` (per analysis tile).
Storms and the model are kept under bench/out/pipeline and reused (--fresh starts over).
"""

from __future__ import annotations

import argparse
import shutil

from _common import OUT, log, progress

from iou_maps.demo import ensure_evaluation, ensure_segmentation, ensure_storm
from iou_maps.evaluation import scene_summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=OUT / "pipeline", help="working data directory")
    p.add_argument("--scenes", type=int, default=24, help="scenes of the training storm")
    p.add_argument("--eval-scenes", type=int, default=16, help="scenes of the evaluation storm")
    p.add_argument("--train-seed", type=int, default=1)
    p.add_argument("--eval-seed", type=int, default=2)
    p.add_argument("--fresh", action="store_true", help="delete the working directory first")
    a = p.parse_args()
    from pathlib import Path

    import geopandas as gpd

    data = Path(a.data_dir)
    if a.fresh and data.exists():
        shutil.rmtree(data)
    with progress() as pr:
        train = ensure_storm(data, f"seed{a.train_seed}", seed=a.train_seed, scenes=a.scenes,
                             size=1536, progress=pr, log=log)  # fmt: skip
        other = ensure_storm(data, f"seed{a.eval_seed}", seed=a.eval_seed, scenes=a.eval_scenes,
                             size=1536, progress=pr, log=log)  # fmt: skip
        seg = ensure_segmentation(data, "bench", [train], 18, progress=pr, log=log)
        table_path = ensure_evaluation(data, "bench", other, seg, 18, progress=pr, log=log)
    table = gpd.read_parquet(table_path)
    print(scene_summary(table)[["scene", "tiles", "miou_mean", "miou_std"]].to_string(index=False))
    print(f"tiles={len(table)} figure={table_path.with_name(table_path.stem + '_examples.png')}")
    print(f"miou_mean={table['miou'].mean():.4f} miou_std={table['miou'].std():.4f}")


if __name__ == "__main__":
    main()
