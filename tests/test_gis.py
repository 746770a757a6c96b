"""A real GIS client (GDAL through rasterio) reads the metric layers and gets the point values."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import mercantile
import pytest
import rasterio
from rasterio.warp import transform

from iou_maps.storms.catalog import Catalog
from service.testing import ServiceProcess

STORM = "alpha"
ZOOM = 18  # the tiny model's analysis zoom
WORLD = 20037508.342789244


@pytest.fixture(scope="module")
def service(served_data, redis_server, tmp_path_factory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("gis") / "service.log"
    with ServiceProcess(served_data.data_dir, redis_server.url, log_path=log) as proc:
        yield proc


@pytest.fixture(scope="module")
def points(served_data, service) -> list[tuple[float, float, dict]]:
    """Centres of the storm's analysis tiles, with the point lookup's answer at each."""
    storm = Catalog(served_data.data_dir).storm(STORM)
    out = []
    with httpx.Client(base_url=service.url, timeout=120) as c:
        for t in mercantile.tiles(*storm.bounds, zooms=[ZOOM]):
            w, s, e, n = mercantile.bounds(t)
            lon, lat = (w + e) / 2, (s + n) / 2
            r = c.get(f"/storms/{STORM}/point/{lon},{lat}")
            if r.status_code == 200:
                out.append((lon, lat, r.json()["metrics"]))
    assert len(out) >= 4
    return out


def gdal_wms_xml(base: str, metric: str) -> str:
    url = f"{base}/storms/{STORM}/metrics/{metric}/tiles/WebMercatorQuad/${{z}}/${{x}}/${{y}}.tif"
    return f"""<GDAL_WMS>
  <Service name="TMS"><ServerUrl>{url}</ServerUrl></Service>
  <DataWindow>
    <UpperLeftX>{-WORLD}</UpperLeftX><UpperLeftY>{WORLD}</UpperLeftY>
    <LowerRightX>{WORLD}</LowerRightX><LowerRightY>{-WORLD}</LowerRightY>
    <TileLevel>{ZOOM}</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>
    <YOrigin>top</YOrigin>
  </DataWindow>
  <Projection>EPSG:3857</Projection>
  <BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY>
  <BandsCount>1</BandsCount><DataType>Float32</DataType>
  <ZeroBlockHttpCodes>204,404</ZeroBlockHttpCodes>
</GDAL_WMS>"""


def sample(ds: rasterio.DatasetReader, lon: float, lat: float) -> float:
    xs, ys = transform("EPSG:4326", ds.crs, [lon], [lat])
    return float(next(ds.sample([(xs[0], ys[0])]))[0])


def assert_same(value: float, expected: float | None) -> None:
    if expected is None:
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("metric", ["miou", "iou_water"])
def test_gdal_wms_xyz_reads_point_values(service, points, tmp_path, metric):
    xml = tmp_path / f"{metric}.xml"
    xml.write_text(gdal_wms_xml(service.url, metric))
    with rasterio.Env(GDAL_HTTP_TIMEOUT="60"), rasterio.open(xml) as ds:
        assert ds.driver == "WMS" and ds.dtypes[0] == "float32"
        for lon, lat, metrics in points:
            assert_same(sample(ds, lon, lat), metrics[metric])


def test_gdal_wmts_capabilities_reads_point_values(service, points, tmp_path):
    url = f"{service.url}/storms/{STORM}/metrics/dice/WMTSCapabilities.xml?tile_format=tif"
    # A GDAL_WMTS description: the capabilities URL, plus the band layout of the raw tiles
    # (the WMTS driver otherwise assumes RGBA bytes).
    xml = tmp_path / "dice-wmts.xml"
    xml.write_text(
        f"""<GDAL_WMTS>
  <GetCapabilitiesUrl>{url.replace("&", "&amp;")}</GetCapabilitiesUrl>
  <Layer>{STORM}_dice_WebMercatorQuad</Layer>
  <TileMatrixSet>WebMercatorQuad</TileMatrixSet>
  <TileMatrix>{ZOOM}</TileMatrix>
  <Format>image/tiff</Format>
  <BandsCount>1</BandsCount>
  <DataType>Float32</DataType>
</GDAL_WMTS>"""
    )
    with rasterio.Env(GDAL_HTTP_TIMEOUT="60"), rasterio.open(xml) as ds:
        assert ds.driver == "WMTS" and ds.dtypes[0] == "float32"
        assert ds.crs.to_epsg() == 3857
        assert ds.res[0] == pytest.approx(2 * WORLD / 256 / 2**ZOOM, rel=1e-6)
        for lon, lat, metrics in points:
            assert_same(sample(ds, lon, lat), metrics["dice"])
