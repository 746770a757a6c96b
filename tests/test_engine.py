"""The metric engine in process: values stored behind the answer, and never computed twice."""

from __future__ import annotations

import threading

import mercantile
import numpy as np
import redis

from iou_maps.metric_store import MetricStore

from .test_precompute import engine_for


def test_values_are_stored_behind_the_answer_and_not_computed_twice(served_data, redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    engine = engine_for(served_data, client)
    storm, _ = engine.storm(served_data.storm)
    c = storm.coverage.representative_point()
    tile = mercantile.tile(c.x, c.y, engine.analysis_zoom)
    store = MetricStore(client, engine.model_id)
    # Hold the writer so the computed value is not in Redis yet when the next request asks.
    gate = threading.Event()
    engine._writer.submit(gate.wait)
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
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    engine = engine_for(served_data, client)
    storm, _ = engine.storm(served_data.storm)
    c = storm.coverage.representative_point()
    tile = mercantile.tile(c.x, c.y, engine.analysis_zoom)
    gate = threading.Event()
    engine._writer.submit(gate.wait)
    engine.analysis_values(served_data.storm, [tile])
    threading.Timer(0.2, gate.set).start()
    engine.close()  # waits for the writer
    assert tile in MetricStore(client, engine.model_id).get_many(served_data.storm, [tile])
