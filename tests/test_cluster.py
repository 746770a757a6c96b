"""Precompute on a real Dask LocalCluster (2 worker processes), and the model in worker
processes: the same values as in process, a SIGKILLed worker costs nothing, a second run
computes nothing (real Redis, real model files, real COGs)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from distributed import Client, LocalCluster

from iou_maps.compute.aggregate import uncached
from iou_maps.compute.cluster import BLOCK_LEVELS, blocks_of, precompute_on_cluster
from iou_maps.compute.computers import LocalComputer, ProcessComputer
from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.metric_store import MetricStore, unpack
from iou_maps.compute.precompute import precompute, storm_tiles
from iou_maps.config import Settings
from iou_maps.storms.catalog import Catalog

from .conftest import ServedData, worker_processes
from .test_precompute import engine_for

#: Values are stored as uint16 steps of 1/65534: two processes may round a value that their
#: float32 arithmetic (other batch sizes, other kernels) puts a hair apart to neighbouring steps.
STEP = 1 / 65534


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=50,
        ) as cluster,
        Client(cluster) as c,
    ):  # fmt: skip
        yield c


def settings_for(data: ServedData, redis_url: str) -> Settings:
    return Settings(data_dir=data.data_dir.resolve(), model=data.model, redis_url=redis_url)


def snapshot(
    client: redis.Redis, storm: str, namespace: str = "iou"
) -> dict[tuple[bytes, bytes], bytes]:
    """Every stored value of ``storm`` (analysis tiles and aggregates) in the key space
    ``namespace``, by key and field."""
    out = {}
    for key in client.scan_iter(match=f"{namespace}:*:{storm}:*"):
        for fld, raw in client.hgetall(key).items():
            out[(key, fld)] = raw
    return out


def assert_same_values(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        x, y = unpack(a[k], 6), unpack(b[k], 6)  # the demo model's six metrics
        assert (x.values is None) == (y.values is None), k
        assert x.count == y.count, k
        if x.values is not None:
            np.testing.assert_allclose(x.values, y.values, atol=1.01 * STEP, err_msg=str(k))


def test_blocks_group_tiles_under_one_ancestor(bigger_data) -> None:
    engine = engine_for(bigger_data, None)
    tiles = storm_tiles(engine, bigger_data.storm)
    blocks = blocks_of(tiles)
    assert sum(len(ts) for ts in blocks.values()) == len(tiles)
    for anc, ts in blocks.items():
        assert anc.z == engine.analysis_zoom - BLOCK_LEVELS and len(ts) <= 4**BLOCK_LEVELS
        assert all((t.x >> BLOCK_LEVELS, t.y >> BLOCK_LEVELS) == (anc.x, anc.y) for t in ts)
    engine.close()


def test_cluster_stores_what_in_process_stores_even_when_a_worker_dies(
    bigger_data, client, redis_url
) -> None:
    r = redis.Redis.from_url(redis_url)
    engine = engine_for(bigger_data, r)
    local = precompute(engine, bigger_data.storm, batch_size=8)
    assert local.failed == 0 and local.computed > 20
    expected = snapshot(r, bigger_data.storm)
    engine.close()
    r.flushdb()

    settings = settings_for(bigger_data, redis_url)
    killed: list[int] = []

    def kill_a_busy_worker(done: int, total: int) -> None:
        # Once blocks are under way (and before the end), SIGKILL a worker that holds one.
        if killed or not 0 < done < total - 8:
            return
        busy = [addr for addr, keys in client.processing().items() if keys]
        pids = client.run(os.getpid)
        if busy:
            killed.append(pids[busy[0]])
            os.kill(pids[busy[0]], signal.SIGKILL)

    # Small blocks (4 tiles): many tasks, so that the kill lands while work remains.
    summary = precompute_on_cluster(
        client,
        settings,
        bigger_data.storm,
        block_levels=1,
        batch_size=4,
        progress=kill_a_busy_worker,
    )
    assert killed, "the run ended before a worker could be killed"
    assert summary.failed == 0, summary.failures
    assert summary.computed + summary.no_imagery == summary.total == local.total
    store = MetricStore(r, local.model_id)
    tiles = storm_tiles(engine_for(bigger_data, None), bigger_data.storm)
    assert uncached(store, bigger_data.storm, tiles) == ([], len(tiles))  # every tile, none missing
    assert_same_values(snapshot(r, bigger_data.storm), expected)  # aggregates included
    assert store.counters()["tiles_computed"] >= summary.computed

    # A second run computes nothing.
    calls = store.counters()["model_calls"]
    again = precompute_on_cluster(client, settings, bigger_data.storm, block_levels=1)
    assert again.computed == 0 and again.already_cached == again.total
    assert store.counters()["model_calls"] == calls


def test_the_model_in_worker_processes(bigger_data, redis_url) -> None:
    # The service's computer: the same numbers as in process, and a worker killed by the OS
    # is replaced.
    computer = ProcessComputer(bigger_data.data_dir, bigger_data.model, processes=1, threads=1)
    workers_before = worker_processes()
    try:
        model_id = computer.start()
        local = engine_for(bigger_data, None)
        assert model_id == local.model_id
        tiles = storm_tiles(local, bigger_data.storm)[:12]
        here = local.local().compute(bigger_data.storm, tiles)
        there = computer.compute(bigger_data.storm, tiles)
        assert there.entries.keys() == here.entries.keys() and there.model_calls >= 1
        for t, e in here.entries.items():
            if e.values is None:
                assert there.entries[t].values is None
            else:
                np.testing.assert_allclose(there.entries[t].values, e.values, atol=1e-5)
        (worker,) = worker_processes() - workers_before
        os.kill(worker, signal.SIGKILL)
        again = computer.compute(bigger_data.storm, tiles)  # a fresh worker loads the model again
        assert again.entries.keys() == here.entries.keys()
        engine = MetricEngine(
            Catalog(bigger_data.data_dir), computer, redis.Redis.from_url(redis_url), 18
        )
        vals = engine.analysis_values(bigger_data.storm, tiles)
        assert vals.computed == len([t for t in tiles if t in here.entries])
        engine.flush()
        assert not isinstance(engine.computer, LocalComputer)
        local.close()
    finally:
        computer.close()


def test_precompute_cli_on_a_local_cluster(bigger_data, redis_url) -> None:
    import subprocess
    import sys

    env = {
        **os.environ, "REDIS_URL": redis_url, "IOU_MAPS_DATA_DIR": str(bigger_data.data_dir),
        "IOU_MAPS_MODEL": bigger_data.model,
    }  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "precompute", bigger_data.storm, "--processes", "2"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "LocalCluster of 2 worker processes" in res.stderr
    assert "computed" in res.stdout and "failed" in res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "precompute", bigger_data.storm, "--processes", "2",
         "--scheduler", "tcp://127.0.0.1:1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and "not both" in res.stderr


def test_true_values_on_the_cluster_are_the_in_process_ones(bigger_data, client, redis_url) -> None:
    # precompute --source true on the cluster: the workers load the segmentation model too,
    # and store what this process would (true values, predictions for the error layer, both
    # layers' aggregates).
    from iou_maps.layers.registry import Source

    from .test_truth import engine_for as engine_with_truth

    r = redis.Redis.from_url(redis_url)
    engine = engine_with_truth(bigger_data, r)
    local = precompute(engine, bigger_data.storm, source=Source.true, batch_size=8)
    assert local.failed == 0 and local.computed > local.layers["error"].computed > 0
    expected = {ns: snapshot(r, bigger_data.storm, ns) for ns in ("iou", "iou-true", "iou-error")}
    assert all(expected.values())
    engine.close()
    r.flushdb()

    summary = precompute_on_cluster(
        client,
        settings_for(bigger_data, redis_url),
        bigger_data.storm,
        source=Source.true,
        block_levels=2,
    )
    assert summary.failed == 0, summary.failures
    assert (summary.total, summary.computed, summary.layers["error"].computed) == (
        local.total, local.computed, local.layers["error"].computed,
    )  # fmt: skip
    assert summary.model_id == local.model_id  # the segmentation model's id
    for ns, values in expected.items():
        assert_same_values(snapshot(r, bigger_data.storm, ns), values)
