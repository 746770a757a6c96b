"""The metric engine in process: values stored behind the answer, and never computed twice."""

from __future__ import annotations

import threading

import mercantile
import numpy as np
import redis
from mercantile import Tile

from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.metric_store import MetricStore

from .test_precompute import engine_for


def held_writer(served_data, redis_url) -> tuple[MetricEngine, redis.Redis, Tile, threading.Event]:
    """An engine on an empty cache whose writer waits for the returned event to be set, and
    an analysis tile with imagery."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    engine = engine_for(served_data, client)
    storm = engine.storm(served_data.storm).storm
    c = storm.coverage.representative_point()
    gate = threading.Event()
    engine.flight._writer.submit(gate.wait)
    return engine, client, mercantile.tile(c.x, c.y, engine.analysis_zoom), gate


def test_values_are_stored_behind_the_answer_and_not_computed_twice(served_data, redis_url):
    # The writer is held: the computed value is not in Redis yet when the next request asks.
    engine, client, tile, gate = held_writer(served_data, redis_url)
    store = MetricStore(client, engine.model_id)
    try:
        first = engine.analysis_values(served_data.storm, [tile])
        assert (first.computed, first.cached, engine.model_calls) == (1, 0, 1)
        assert store.get_many(served_data.storm, [tile]) == {}  # not stored yet
        again = engine.analysis_values(served_data.storm, [tile])
        # Taken from the finished computation: ready-made, no second model call.
        assert (again.computed, again.cached, engine.model_calls) == (0, 1, 1)
        np.testing.assert_array_equal(again.entries[tile].values, first.entries[tile].values)
    finally:
        gate.set()
    engine.flush()
    stored = store.get_many(served_data.storm, [tile])[tile]
    np.testing.assert_allclose(stored.values, first.entries[tile].values, atol=2e-5)
    third = engine.analysis_values(served_data.storm, [tile])
    assert (third.computed, third.cached, engine.model_calls) == (0, 1, 1)
    engine.close()


def test_close_stores_what_was_computed(served_data, redis_url):
    engine, client, tile, gate = held_writer(served_data, redis_url)
    engine.analysis_values(served_data.storm, [tile])
    threading.Timer(0.2, gate.set).start()
    engine.close()  # waits for the writer
    assert tile in MetricStore(client, engine.model_id).get_many(served_data.storm, [tile])


def test_a_tile_read_alone_is_rio_tilers_chip(served_data):
    """read_one's grid path gives the chip rio-tiler's mosaic read gives, tile by tile
    (scene edges and overlaps included), or None for both."""
    from iou_maps.storms.grid import tiles_intersecting

    engine = engine_for(served_data, None)
    loaded = engine.storm(served_data.storm)
    storm, backend = loaded.storm, loaded.backend
    tiles = tiles_intersecting(storm.coverage, engine.analysis_zoom)
    assert len(tiles) >= 8
    partial = 0
    for t in tiles:
        reader = engine.local().reader
        fast = reader.read_one(backend, t).chip
        ref = reader.read_with_rio_tiler(backend, t).chip
        assert (fast is None) == (ref is None), t
        if ref is not None:
            assert fast.flags.c_contiguous and fast.shape == (256, 256, 3)
            np.testing.assert_array_equal(fast, ref)
            partial += int((ref == 0).all(axis=-1).any())
    assert partial > 0  # some tiles cross a scene edge
    engine.close()
