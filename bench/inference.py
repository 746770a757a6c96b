"""Regressor inference speed through the service's compiled path, at batch 1 and batch 32.

Uses the demo-size architecture (a fresh build: speed does not depend on the weights), saved
and reloaded like a served model. Last line `batch1_tiles_s=<f> batch32_tiles_s=<f>`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import log, save_demo_size_regressor


def rate(predict, chips, batch: int, seconds: float) -> float:
    """Tiles per second over repeated calls for at least ``seconds`` (after a warm-up call)."""
    predict(chips[:batch])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predict(chips[:batch])
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0, help="time per batch size")
    a = p.parse_args()
    import numpy as np

    from iou_maps.regressor import load_regressor

    with tempfile.TemporaryDirectory() as tmp:
        save_demo_size_regressor(Path(tmp))
        reg = load_regressor(Path(tmp))
    chips = np.random.default_rng(0).integers(0, 255, (32, 256, 256, 3), dtype=np.uint8)
    r1 = rate(reg.predict, chips, 1, a.seconds)
    r32 = rate(reg.predict, chips, 32, a.seconds)
    for n in (1, 2, 5, 17, 32):
        reg.predict(chips[:n])
    log(f"compiled graphs after batch sizes 1..32: {reg.trace_count()}")
    print(f"batch 1: {r1:.1f} tiles/s   batch 32: {r32:.1f} tiles/s   ({r32 / r1:.1f}x)")
    print(f"batch1_tiles_s={r1:.2f} batch32_tiles_s={r32:.2f}")


if __name__ == "__main__":
    main()
