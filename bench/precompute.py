"""Precompute throughput vs. raw batched inference, and Redis memory per analysis tile.

On a synthetic storm of several thousand analysis tiles (kept under bench/out/precompute),
with a demo-size regressor, against a private Redis server:
- precompute tiles/s (imagery reads in the thread pool, full batches, pipelined writes,
  aggregates included in the time);
- raw batched-inference tiles/s of the same regressor on the same tiles, pre-loaded in memory;
- Redis `used_memory` growth divided by the number of analysis tiles (aggregates included).
Last line `precompute_vs_raw=<ratio> redis_bytes_per_tile=<n>`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import OUT, ensure_demo_size_regressor, log, private_redis, progress


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=OUT / "precompute", help="working data directory")
    p.add_argument("--scenes", type=int, default=80, help="scenes of the storm")
    p.add_argument("--size", type=int, default=2560, help="scene size in pixels")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument(
        "--raw-tiles", type=int, default=0, help="tiles for the raw-inference run (0: all)"
    )
    a = p.parse_args()
    from iou_maps.models import runtime

    # Set up as `iou-maps precompute` is (oneDNN on, one core per op, parallel branches), for
    # both sides: precompute and raw inference run the same faster path.
    runtime.inference_process()
    import numpy as np
    import redis

    from iou_maps.cli.demo import ensure_storm
    from iou_maps.compute.engine import MetricEngine
    from iou_maps.compute.precompute import precompute, storm_tiles
    from iou_maps.models.registry import regressor_dir
    from iou_maps.models.regressor.files import load_regressor
    from iou_maps.storms.catalog import Catalog

    data = Path(a.data_dir)
    with progress() as pr:
        ensure_storm(data, "big", seed=7, scenes=a.scenes, size=a.size, progress=pr, log=log)
    target = regressor_dir(data, "bench")
    ensure_demo_size_regressor(target)
    reg = load_regressor(target)

    with private_redis() as url:
        client = redis.Redis.from_url(url)
        engine = MetricEngine(Catalog(data), reg, client, 18)
        reg.predict(np.zeros((a.batch_size, 256, 256, 3), np.uint8))  # trace once, outside timing
        before = int(client.info("memory")["used_memory"])
        with progress() as pr:
            advance = pr("precompute big", None)
            last = [0]

            def on_progress(done: int, total: int) -> None:
                advance(done - last[0])
                last[0] = done

            summary = precompute(engine, "big", batch_size=a.batch_size, workers=a.workers,
                                 progress=on_progress)  # fmt: skip
        after = int(client.info("memory")["used_memory"])
        keys = client.dbsize()
    pre_rate = summary.tiles_per_second

    tiles = storm_tiles(engine, "big")
    tiles = tiles[: a.raw_tiles] if a.raw_tiles else tiles  # the same tiles as precompute
    backend = engine.storm("big").backend
    reads = engine.local().reader.read(backend, tiles)
    chips = [r.chip for r in reads if r.chip is not None]
    stack = np.stack(chips)
    start = time.perf_counter()
    for i in range(0, len(stack), a.batch_size):
        reg.predict(stack[i : i + a.batch_size])
    raw_rate = len(stack) / (time.perf_counter() - start)
    engine.close()

    per_tile = (after - before) / max(summary.total, 1)
    print(f"analysis tiles: {summary.total} (computed {summary.computed}, without imagery "
          f"{summary.no_imagery}, failed {summary.failed}), aggregates {summary.aggregated}, "
          f"Redis keys {keys}")  # fmt: skip
    for reason in summary.failures[:5]:
        print(f"failed: {reason}")
    print(
        f"precompute: {pre_rate:.1f} tiles/s over {summary.seconds:.1f} s; "
        f"raw batched inference: {raw_rate:.1f} tiles/s on {len(stack)} pre-loaded tiles"
    )
    print(f"redis used_memory: {before} -> {after} bytes")
    print(f"precompute_vs_raw={pre_rate / raw_rate:.3f} redis_bytes_per_tile={per_tile:.1f}")


if __name__ == "__main__":
    main()
