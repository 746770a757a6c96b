"""The Python API (iou_maps.api) on the shared synthetic storm, real Redis and the tiny real
models: its rows are the cached values, its geometry the tiles' bounds, its TileJSON URL one
the service answers, and bad input raises the library's errors."""

from __future__ import annotations

import math
from collections.abc import Iterator

import mercantile
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient
from mercantile import Tile

from iou_maps.api import EMPTY, MISSING, VALUE, StormMaps, open_storm
from iou_maps.compute.metric_store import Entry, MetricStore
from iou_maps.compute.precompute import precompute
from iou_maps.errors import (
    BadBBox,
    BadBudget,
    InvalidStormName,
    NoLabels,
    OutsideStorm,
    StormNotFound,
    UnknownLayer,
    UnknownMetric,
)
from iou_maps.layers.registry import LAYERS, get_layer
from iou_maps.models.classes import DEMO_CLASSES
from iou_maps.storms.grid import tiles_intersecting
from iou_maps.storms.ingest import ingest
from iou_maps.storms.synthetic.generate import generate_storm
from service.app import create_app

from .conftest import RedisProcess, ServedData


@pytest.fixture(scope="module")
def maps(served_data: ServedData, redis_server: RedisProcess) -> Iterator[StormMaps]:
    redis_server.client().flushdb()
    with open_storm(
        served_data.storm, served_data.data_dir, model=served_data.model, redis_url=redis_server.url
    ) as opened:
        yield opened


@pytest.fixture(scope="module")
def bbox(maps: StormMaps) -> tuple[float, float, float, float]:
    """The z16 tile at a labelled point of the storm, precomputed (every layer)."""
    c = maps.storm.label_coverage.representative_point()
    box = mercantile.bounds(mercantile.tile(c.x, c.y, maps.analysis_zoom - 2))
    for source in ("predicted", "true"):  # true fills the error layer too
        precompute(maps.engine, maps.name, source=source, bbox=box, min_zoom=16)
    return box


def stored(maps: StormMaps, layer: str, tiles: list[Tile]) -> dict[Tile, Entry]:
    """What precompute stored, read straight from Redis."""
    chosen = get_layer(layer)
    store = MetricStore(maps.engine.client, maps.engine.sources.model_id(chosen), chosen.key_space)
    return store.get_many(maps.name, tiles)


def frame_tiles(frame) -> list[Tile]:
    return [Tile(int(x), int(y), int(z)) for z, x, y in zip(frame.z, frame.x, frame.y, strict=True)]


def metric_rows(frame) -> np.ndarray:
    return frame[list(DEMO_CLASSES.metrics)].to_numpy()


def test_values_are_the_stored_values_on_the_tiles_polygons(maps, bbox) -> None:
    frame = maps.values("predicted", bbox)
    tiles = frame_tiles(frame)
    area = shapely.intersection(maps.storm.coverage, shapely.box(*bbox))
    assert set(tiles) == set(tiles_intersecting(area, maps.analysis_zoom))
    assert len(tiles) > 1
    assert frame.crs.to_epsg() == 4326
    for tile, geom in zip(tiles, frame.geometry, strict=True):
        np.testing.assert_allclose(geom.bounds, tuple(mercantile.bounds(tile)), rtol=0, atol=1e-12)
    cached = stored(maps, "predicted", tiles)
    assert set(cached) == set(tiles)
    for row, tile in enumerate(tiles):
        entry = cached[tile]
        assert frame.state.iloc[row] == (VALUE if entry.has_imagery else EMPTY)
        if entry.values is not None:
            np.testing.assert_array_equal(metric_rows(frame)[row], entry.values)
    assert (frame.state == VALUE).sum() > 0


def test_true_and_error_values_are_the_stored_truth_and_its_difference(maps, bbox) -> None:
    true = maps.values("true", bbox)
    tiles = frame_tiles(true)
    truth = stored(maps, "true", tiles)
    assert set(truth) == set(tiles)
    with_value = [t for t in tiles if truth[t].values is not None]
    assert with_value
    rows = {t: i for i, t in enumerate(tiles)}
    for t in with_value:
        np.testing.assert_array_equal(metric_rows(true)[rows[t]], truth[t].values)
    error = maps.values("error", bbox)
    assert frame_tiles(error) == tiles
    predicted = stored(maps, "predicted", tiles)
    for t in with_value:
        expected = predicted[t].values - truth[t].values
        np.testing.assert_array_equal(metric_rows(error)[rows[t]], expected)
    assert set(error.state[[rows[t] for t in with_value]]) == {VALUE}


def test_reading_never_computes_and_compute_stays_within_its_budget(maps, bbox) -> None:
    whole = maps.values()
    inside = set(tiles_intersecting(shapely.box(*bbox), maps.analysis_zoom))
    known = {t for t, s in zip(frame_tiles(whole), whole.state, strict=True) if s != MISSING}
    assert known == inside & set(frame_tiles(whole))
    assert whole.loc[whole.state == MISSING, list(DEMO_CLASSES.metrics)].isna().all().all()
    more = maps.values(compute=True, budget=3)
    known_now = {t for t, s in zip(frame_tiles(more), more.state, strict=True) if s != MISSING}
    assert known < known_now and len(known_now - known) == 3
    assert set(stored(maps, "predicted", list(known_now - known))) == known_now - known
    assert maps.summary().cached == len(known_now)
    assert maps.summary().analysis_tiles == len(whole)


def test_point_is_its_tiles_stored_values(maps, bbox) -> None:
    frame = maps.values("true", bbox)
    row = frame[frame.state == VALUE].iloc[0]
    tile = Tile(int(row.x), int(row.y), int(row.z))
    c = row.geometry.centroid
    got = maps.point(c.x, c.y)
    assert got.tile == tile and got.labelled and got.missing == 0
    assert got.predicted is not None and got.true is not None
    for metric, value in zip(
        DEMO_CLASSES.metrics, stored(maps, "true", [tile])[tile].values, strict=True
    ):
        assert got.true[metric] == pytest.approx(value, nan_ok=True)
    for metric, value in zip(
        DEMO_CLASSES.metrics, stored(maps, "predicted", [tile])[tile].values, strict=True
    ):
        assert got.predicted[metric] == pytest.approx(value, nan_ok=True)
    w, s, e, n = maps.bounds
    with pytest.raises(OutsideStorm):
        maps.point(e + 1, n + 1)


def test_layers_come_from_the_registry_and_say_which_the_storm_has(maps, served_data, tmp_path):
    infos = maps.layers
    assert [i.name for i in infos] == list(LAYERS)
    for info in infos:
        layer = LAYERS[info.name]
        assert (info.colormap, info.rescale, info.needs_labels) == (
            layer.colormap, layer.rescale, layer.needs_labels,
        )  # fmt: skip
        assert info.available and info.reason is None
    # A storm without labels: the layers that need them are not available, and say why.
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(served_data.data_dir / "models")
    generate_storm("bare", tmp_path / "src", scenes=1, size=256, labels=False)
    ingest(data, "bare", [tmp_path / "src"])
    with open_storm(
        "bare", data, model=served_data.model, redis_url=maps.settings.redis_url
    ) as bare:
        by_name = {i.name: i for i in bare.layers}
        for name, layer in LAYERS.items():
            assert by_name[name].available is not layer.needs_labels
            assert (by_name[name].reason is not None) is layer.needs_labels
        with pytest.raises(NoLabels):
            bare.values("true")


def test_tilejson_url_is_the_services(maps, bbox) -> None:
    client = TestClient(create_app(maps.settings, engine=maps.engine))
    for layer in LAYERS:
        url = maps.tilejson_url(layer, "dice", base_url="http://testserver/")
        got = client.get(url)
        assert got.status_code == 200, got.text
        assert (got.json()["source"], got.json()["metric"]) == (layer, "dice")
        x, y = _xy(bbox)
        assert client.get(got.json()["tiles"][0].format(z=16, x=x, y=y)).status_code == 200
    assert client.get(maps.imagery_tilejson_url("http://testserver")).status_code == 200


def _xy(bbox: tuple[float, float, float, float]) -> tuple[int, int]:
    t = mercantile.tile((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2, 16)
    return t.x, t.y


def test_bad_input_raises_the_librarys_errors(maps, served_data) -> None:
    with pytest.raises(StormNotFound):
        open_storm("nosuch", served_data.data_dir, model=served_data.model)
    with pytest.raises(InvalidStormName):
        open_storm("../alpha", served_data.data_dir, model=served_data.model)
    with pytest.raises(UnknownLayer):
        maps.values("nosuch")
    with pytest.raises(UnknownLayer):
        maps.tilejson_url("nosuch")
    with pytest.raises(UnknownMetric):
        maps.tilejson_url("predicted", "accuracy")
    for bad in [(1, 2, 3), (2, 0, 1, 1), (0, 1, 1, 0), (0, 0, math.nan, 1), (0, 0, 1, 91), "w"]:
        with pytest.raises(BadBBox):
            maps.values("predicted", bad)
    with pytest.raises(BadBudget):
        maps.values(compute=True, budget=-1)


def test_settings_come_from_the_environment(maps, served_data, monkeypatch) -> None:
    monkeypatch.setenv("IOU_MAPS_DATA_DIR", str(served_data.data_dir))
    monkeypatch.setenv("IOU_MAPS_MODEL", served_data.model)
    monkeypatch.setenv("REDIS_URL", str(maps.settings.redis_url))
    with open_storm(served_data.storm) as again:
        assert again.engine.model_id == maps.engine.model_id
        ours, theirs = maps.values(), again.values()
        assert list(ours.state) == list(theirs.state)
        np.testing.assert_array_equal(metric_rows(ours), metric_rows(theirs))
