"""Ingest and catalog: every input format, tars, idempotence, corrupt files, bad names, crashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from rio_cogeo.cogeo import cog_validate

from iou_maps.errors import InvalidStormName, StormNotFound
from iou_maps.models.classes import NODATA_LABEL
from iou_maps.storms import catalog as catalog_mod
from iou_maps.storms.catalog import Catalog, validate_storm_name
from iou_maps.storms.ingest import ingest
from iou_maps.storms.synthetic.generate import generate_storm

SIZE = 512


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    out = {}
    for fmt in ("geotiff", "jpeg", "noaa-jpg"):
        generate_storm("cat", root / fmt, scenes=4, seed=7, fmt=fmt, size=SIZE)
        out[fmt] = root / fmt
    generate_storm("cat", root / "tar", scenes=4, seed=7, fmt="geotiff", size=SIZE, tar=True)
    out["tar"] = root / "tar"
    return out


def test_geotiff_ingest_writes_cogs_labels_and_geoparquet(sources, tmp_path) -> None:
    report = ingest(tmp_path, "cat", [sources["geotiff"]])
    assert len(report.ingested) == 4 and not report.skipped
    storm = Catalog(tmp_path).storm("cat")
    fp = storm.footprints
    assert len(fp) == 4 and fp.crs.to_epsg() == 4326
    # GeoParquet metadata is present (readable by any GeoParquet reader).
    assert b"geo" in pq.read_schema(storm.footprints_path).metadata
    for row in fp.itertuples():
        valid, errors, _ = cog_validate(row.path, quiet=True)
        assert valid, errors
        with rasterio.open(row.path) as ds:
            assert ds.count == 3 and ds.nodata == 0 and ds.overviews(1)
        with rasterio.open(row.label_path) as ds:
            lab = ds.read(1)
            assert ds.nodata == NODATA_LABEL
            assert set(np.unique(lab)) <= {0, 1, 2, 3, NODATA_LABEL}
        # Footprint from the valid-data area: a rotated frame is smaller than its bbox.
        assert row.geometry.area < 0.99 * shapely.box(*row.geometry.bounds).area
        assert -75.6 < row.geometry.centroid.x < -75.3 and 35.4 < row.geometry.centroid.y < 35.8
        assert 0.3 <= row.gsd <= 0.5


@pytest.mark.parametrize("fmt", ["jpeg", "noaa-jpg", "tar"])
def test_other_formats_land_where_the_geotiffs_do(sources, tmp_path, fmt) -> None:
    ingest(tmp_path / "ref", "cat", [sources["geotiff"]])
    report = ingest(tmp_path / "other", "cat", [sources[fmt]])
    assert len(report.ingested) == 4, report.skipped
    ref = Catalog(tmp_path / "ref").storm("cat")
    other = Catalog(tmp_path / "other").storm("cat")
    a, b = ref.coverage, other.coverage
    assert a.intersection(b).area / a.union(b).area > 0.97
    assert other.footprints["label_path"].notna().all()


def test_reingest_is_idempotent(sources, tmp_path) -> None:
    ingest(tmp_path, "cat", [sources["geotiff"]])
    path = Catalog(tmp_path).storm("cat").footprints_path
    before = path.read_bytes()
    report = ingest(tmp_path, "cat", [sources["geotiff"]])
    assert report.ingested == [] and len(report.unchanged) == 4
    assert path.read_bytes() == before
    assert len(list((path.parent / "scenes").iterdir())) == 4


def test_corrupt_files_are_skipped_with_a_reason(sources, tmp_path) -> None:
    src = tmp_path / "src"
    subprocess.run(["cp", "-r", str(sources["geotiff"]), str(src)], check=True)
    (src / "garbage.tif").write_bytes(b"this is not a tiff")
    good = next(src.rglob("*_001.tif"))
    truncated = src / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[:5000])
    (src / "nogeo.jpg").write_bytes(
        (
            sources["jpeg"]
            / next(p.relative_to(sources["jpeg"]) for p in sources["jpeg"].rglob("*.jpg"))
        ).read_bytes()
    )
    report = ingest(tmp_path / "data", "cat", [src])
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {"garbage.tif", "truncated.tif", "nogeo.jpg"}
    assert "not georeferenced" in reasons["nogeo.jpg"]
    assert len(report.ingested) == 4
    assert len(Catalog(tmp_path / "data").storm("cat").footprints) == 4


def test_cli_reports_skipped_files(sources, tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.tif").write_bytes(b"\x00" * 100)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "iou_maps.cli",
            "ingest",
            "cat",
            str(bad),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert "broken.tif" in res.stderr and "nothing was ingested" in res.stderr


@pytest.mark.parametrize("name", ["../etc", "Demo", "", "a/b", "-x", "x" * 65, "storm name"])
def test_bad_storm_names_are_refused_before_touching_disk(tmp_path, name) -> None:
    with pytest.raises(InvalidStormName):
        validate_storm_name(name)
    with pytest.raises(InvalidStormName):
        ingest(tmp_path, name, [tmp_path])
    with pytest.raises(InvalidStormName):
        Catalog(tmp_path).storm(name)
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_name_and_unknown_storm(tmp_path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "ingest", "../x", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "invalid storm name" in res.stderr
    with pytest.raises(StormNotFound, match="unknown storm"):
        Catalog(tmp_path).storm("nosuch")


def test_crash_while_writing_catalog_keeps_previous_catalog(sources, tmp_path, monkeypatch) -> None:
    ingest(tmp_path, "cat", [sources["geotiff"]])
    path = Catalog(tmp_path).storm("cat").footprints_path
    before = path.read_bytes()

    def half_write(self, target, *args, **kwargs):
        Path(target).write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_parquet", half_write)
    with pytest.raises(OSError, match="disk full"):
        ingest(tmp_path, "cat", [sources["jpeg"]])
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.part")) and not list(path.parent.glob(".*"))
    assert len(Catalog(tmp_path).storm("cat").footprints) == 4


def test_storms_cli_lists_summary(sources, tmp_path) -> None:
    ingest(tmp_path, "cat", [sources["geotiff"]])
    res = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "storms", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "cat" in res.stdout
    summary = Catalog(tmp_path).summary()
    assert summary.loc[0, "scenes"] == 4 and summary.loc[0, "labelled"] == 4


def test_scene_lookup_uses_the_footprints(sources, tmp_path) -> None:
    ingest(tmp_path, "cat", [sources["geotiff"]])
    storm = Catalog(tmp_path).storm("cat")
    c = storm.footprints.geometry.iloc[0].representative_point()
    assert storm.footprints.scene_id.iloc[0] in set(storm.scenes_at(c.x, c.y).scene_id)
    assert storm.scenes_at(0.0, 0.0).empty
    assert catalog_mod.FOOTPRINTS == "footprints.parquet"
