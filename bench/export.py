"""PMTiles export speed from a warm cache, and the archive's bytes per tile.

On the synthetic storm of bench/precompute.py (kept under bench/out/precompute, made if
missing), against a private Redis server whose cache holds a value for every analysis tile:
a smooth random field of mIoU-like values (spatially correlated, as real maps are: it
decides how well the PNG tiles compress, and no model runs). A first export writes the
lower-zoom aggregates; then ``--runs`` exports of every zoom the service serves are timed
(their tile-writing stage: grids from the cache, encoding, the archive).
Last line `export_tiles_s=<median tiles written per second> pmtiles_bytes_per_tile=<n>`.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _common import OUT, ensure_demo_size_regressor, log, private_redis, progress


def smooth_field(tiles, seed: int = 0):
    """mIoU-like values in [0, 1] per tile: a sum of random waves over the tile grid plus a
    little noise (neighbours alike, as on a real storm)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    xs = np.array([t.x for t in tiles], float)
    ys = np.array([t.y for t in tiles], float)
    field = np.zeros(len(tiles))
    for _ in range(6):
        kx, ky = rng.uniform(-0.15, 0.15, 2)
        field += np.sin(kx * xs + ky * ys + rng.uniform(0, 2 * np.pi))
    field = 0.5 + 0.4 * field / 6 + rng.normal(0, 0.03, len(tiles))
    return np.clip(field, 0, 1).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=OUT / "precompute", help="working data directory")
    p.add_argument("--scenes", type=int, default=80, help="scenes of the storm")
    p.add_argument("--size", type=int, default=2560, help="scene size in pixels")
    p.add_argument("--runs", type=int, default=5, help="timed exports")
    a = p.parse_args()
    import numpy as np
    import redis

    from iou_maps.cli.demo import ensure_storm
    from iou_maps.compute.metric_store import Entry, MetricStore
    from iou_maps.compute.plan import tiles_of
    from iou_maps.config import Settings
    from iou_maps.exports.filling import open_export_engine
    from iou_maps.exports.formats import export_storm
    from iou_maps.exports.maps import MetricMap
    from iou_maps.models.classes import DEMO_CLASSES
    from iou_maps.models.registry import regressor_dir
    from iou_maps.storms.catalog import Catalog

    data = Path(a.data_dir)
    with progress() as pr:
        ensure_storm(data, "big", seed=7, scenes=a.scenes, size=a.size, progress=pr, log=log)
    ensure_demo_size_regressor(regressor_dir(data, "bench"))
    out = OUT / "export"
    out.mkdir(parents=True, exist_ok=True)

    with private_redis() as url:
        settings = Settings(data_dir=data, model="bench", redis_url=url)
        engine = open_export_engine(settings)
        storm = Catalog(data).storm("big")
        tiles = tiles_of(storm, engine.analysis_zoom)
        miou = smooth_field(tiles)
        values = np.tile(np.float32(0.5), (len(tiles), DEMO_CLASSES.nmetrics))
        values[:, DEMO_CLASSES.metric_index("miou")] = miou
        store = MetricStore(redis.Redis.from_url(url), engine.model_id)
        for i in range(0, len(tiles), 4096):
            store.set_many("big", {t: Entry(values[j], 1) for j, t in
                                   enumerate(tiles[i : i + 4096], start=i)})  # fmt: skip
        layer = MetricMap("big", "miou")
        target = out / "big-miou.pmtiles"
        first = export_storm("pmtiles", engine, layer, target)
        log(f"first export: {first.tiles} tiles, aggregates written "
            f"{first.fill.all_aggregated}, model calls {first.fill.model_calls}")  # fmt: skip
        rates = []
        for run in range(a.runs):
            s = export_storm("pmtiles", engine, layer, target)
            assert s.fill.model_calls == 0 and s.fill.all_aggregated == 0
            rates.append(s.tiles_per_second)
            log(f"run {run + 1}: {s.tiles} tiles in {s.seconds:.2f} s = "
                f"{s.tiles_per_second:.0f} tiles/s")  # fmt: skip
        mb = export_storm("mbtiles", engine, layer, out / "big-miou.mbtiles")
        engine.close()
    size = target.stat().st_size
    print(f"analysis tiles: {len(tiles)}; zooms {s.zooms[0]}..{s.zooms[1]}; tiles {s.tiles}; "
          f"PMTiles {size} bytes; MBTiles {mb.bytes} bytes "
          f"({mb.tiles_per_second:.0f} tiles/s)")  # fmt: skip
    print(f"tiles/s over {a.runs} runs: min {min(rates):.0f} median "
          f"{statistics.median(rates):.0f} max {max(rates):.0f}")  # fmt: skip
    print(
        f"export_tiles_s={statistics.median(rates):.0f} pmtiles_bytes_per_tile={size / s.tiles:.0f}"
    )


if __name__ == "__main__":
    main()
