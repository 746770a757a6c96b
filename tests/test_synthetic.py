"""The synthetic storm generator, checked on the real files it writes (read back with rasterio)."""

from __future__ import annotations

import csv
import math
import re
import tarfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

from iou_maps.models.classes import DEMO_CLASSES, NODATA_LABEL
from iou_maps.storms.synthetic.generate import FORMATS, SyntheticStorm, generate_storm

SIZE = 512
GSD = 1.2  # 614 m frames, as wide as the full-size default (1536 px at 0.4 m)
SEED = 11


def read(path: Path) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS | None, float | None]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs, ds.nodata


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStorm:
    out = tmp_path_factory.mktemp("geotiff")
    return generate_storm("test-storm", out, scenes=6, seed=SEED, size=SIZE, gsd=GSD)


@pytest.fixture(scope="module")
def noaa(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStorm:
    out = tmp_path_factory.mktemp("noaa")
    return generate_storm("test-storm", out, 6, SEED, "noaa-jpg", size=SIZE, gsd=GSD)


def overlap(a: Path, b: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels of two scenes on their common pixels (the scenes share one snapped pixel lattice)."""
    la, ta, _, _ = read(a)
    lb, tb, _, _ = read(b)
    la, lb = la[0], lb[0]
    dc = round((tb.c - ta.c) / GSD)
    dr = round((ta.f - tb.f) / GSD)
    assert math.isclose(tb.c - ta.c, dc * GSD, abs_tol=1e-6)  # same lattice
    r0, c0 = max(0, dr), max(0, dc)
    r1, c1 = min(la.shape[0], dr + lb.shape[0]), min(la.shape[1], dc + lb.shape[1])
    if r1 <= r0 or c1 <= c0:
        return np.zeros(0, np.uint8), np.zeros(0, np.uint8)
    wa = la[r0:r1, c0:c1]
    wb = lb[r0 - dr : r1 - dr, c0 - dc : c1 - dc]
    both = (wa != NODATA_LABEL) & (wb != NODATA_LABEL)
    return wa[both], wb[both]


def test_layout_ids_and_progress(tmp_path: Path) -> None:
    calls: list[int] = []
    s = generate_storm("t", tmp_path, scenes=3, seed=1, size=256, gsd=2.4, progress=calls.append)
    assert calls == [1, 1, 1]
    assert len({sc.flight for sc in s.scenes}) == 1  # few scenes: one flight line
    for sc in s.scenes:
        assert re.fullmatch(r"\d{8}[a-c]_RGB", sc.flight)
        assert re.fullmatch(re.escape(sc.flight) + r"_\d{3}", sc.scene_id)
        assert sc.image_path == tmp_path / sc.flight / f"{sc.scene_id}.tif"
        assert sc.label_path == tmp_path / sc.flight / f"{sc.scene_id}_label.tif"
        assert sc.image_path.is_file() and sc.label_path.is_file()
    times = [datetime.fromisoformat(sc.datetime) for sc in s.scenes]
    assert times == sorted(times) and len(set(times)) == 3
    assert s.catalog_csv is None and s.tars == []
    many = generate_storm("t", tmp_path / "m", scenes=9, seed=1, size=256, gsd=2.4, labels=False)
    assert len({sc.flight for sc in many.scenes}) == 3
    assert all(sc.label_path is None for sc in many.scenes)


def test_deterministic(tmp_path: Path) -> None:
    def arrays(out: Path, seed: int) -> list[np.ndarray]:
        s = generate_storm("t", out, scenes=2, seed=seed, size=256, gsd=2.4)
        return [read(p)[0] for sc in s.scenes for p in (sc.image_path, sc.label_path)]

    a, b, c = arrays(tmp_path / "a", 4), arrays(tmp_path / "b", 4), arrays(tmp_path / "c", 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_georeferenced_on_the_outer_banks(storm: SyntheticStorm) -> None:
    for sc in storm.scenes:
        with rasterio.open(sc.image_path) as ds:
            assert ds.crs.to_epsg() == 32618
            assert ds.count == 3 and ds.dtypes == ("uint8",) * 3 and ds.nodata == 0
            assert ds.res == pytest.approx((GSD, GSD))
            assert ds.transform.b == 0 and ds.transform.d == 0  # north-up
            west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
            label_profile = rasterio.open(sc.label_path).profile
        assert -75.56 < west < east < -75.38
        assert 35.52 < south < north < 35.72
        assert label_profile["count"] == 1 and label_profile["nodata"] == NODATA_LABEL
        assert label_profile["transform"] == ds.transform


def test_collar_only_outside_the_rotated_frame(storm: SyntheticStorm) -> None:
    for sc in storm.scenes:
        img, _, _, _ = read(sc.image_path)
        lab = read(sc.label_path)[0][0]
        valid = img.any(axis=0)
        assert np.array_equal(valid, lab != NODATA_LABEL)
        assert set(np.unique(lab)) <= set(range(DEMO_CLASSES.nclasses)) | {NODATA_LABEL}
        # The frame covers size^2 pixels of ground but is rotated inside a larger bounding box.
        assert valid.sum() == pytest.approx(SIZE * SIZE, rel=0.01)
        assert valid.mean() < 0.97
        for r, c in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            assert not valid[r, c]
        h, w = valid.shape
        assert valid[h // 2, w // 2]
        # Every row of a rotated rectangle is one run of valid pixels, with no holes.
        for row in valid[:: max(1, h // 16)]:
            cols = np.flatnonzero(row)
            if cols.size:
                assert cols[-1] - cols[0] + 1 == cols.size


def test_adjacent_scenes_show_the_same_ground(storm: SyntheticStorm) -> None:
    scenes = storm.scenes
    flights = sorted({sc.flight for sc in scenes})
    assert len(flights) == 2
    pairs = [(a, b) for a, b in zip(scenes, scenes[1:], strict=False) if a.flight == b.flight]
    assert len(pairs) == 4
    for a, b in pairs:
        la, lb = overlap(a.label_path, b.label_path)
        frac = la.size / (SIZE * SIZE)
        assert 0.2 < frac < 0.45, f"{a.scene_id}/{b.scene_id} overlap {frac:.2f}"
        assert (la == lb).mean() >= 0.95
    # Adjacent flight lines overlap too.
    line_a = [sc for sc in scenes if sc.flight == flights[0]]
    line_b = [sc for sc in scenes if sc.flight == flights[1]]
    best = 0.0
    for a in line_a:
        for b in line_b:
            la, lb = overlap(a.label_path, b.label_path)
            if la.size:
                assert (la == lb).mean() >= 0.95
            best = max(best, la.size / (SIZE * SIZE))
    assert best > 0.15


def test_all_classes_and_difficulty_vary(storm: SyntheticStorm) -> None:
    present: set[int] = set()
    separations = []
    contrasts = []
    block = 64
    for sc in storm.scenes:
        img = read(sc.image_path)[0].astype(np.float32)
        lab = read(sc.label_path)[0][0]
        present |= set(np.unique(lab).tolist())
        grey = img.mean(axis=0)
        for r in range(0, lab.shape[0] - block + 1, block):
            for c in range(0, lab.shape[1] - block + 1, block):
                lb = lab[r : r + block, c : c + block]
                if (lb == NODATA_LABEL).any():
                    continue
                contrasts.append(float(grey[r : r + block, c : c + block].std()))
                px = img[:, r : r + block, c : c + block].reshape(3, -1)
                flat = lb.ravel()
                classes = [k for k in range(DEMO_CLASSES.nclasses) if (flat == k).mean() > 0.15]
                if len(classes) < 2:
                    continue
                # How far apart the two main classes' colours are, relative to their spread.
                m0, m1 = (px[:, flat == k] for k in classes[:2])
                spread = math.sqrt(m0.var(axis=1).sum() + m1.var(axis=1).sum())
                dist = float(np.linalg.norm(m0.mean(axis=1) - m1.mean(axis=1)))
                separations.append(dist / spread)
    assert present == set(range(DEMO_CLASSES.nclasses)) | {NODATA_LABEL}
    assert len(separations) >= 10
    # Some places are easy (classes far apart in colour), others hard.
    assert np.percentile(separations, 90) > 3 * np.percentile(separations, 10)
    assert np.percentile(contrasts, 90) > 2 * np.percentile(contrasts, 10)


def test_jpeg_with_world_files(tmp_path: Path, storm: SyntheticStorm) -> None:
    s = generate_storm("test-storm", tmp_path, scenes=6, seed=SEED, fmt="jpeg", size=SIZE, gsd=GSD)
    for sc, ref in zip(s.scenes, storm.scenes, strict=True):
        assert sc.scene_id == ref.scene_id
        assert sc.image_path == tmp_path / sc.flight / f"{sc.scene_id}.jpg"
        assert sc.label_path == tmp_path / sc.flight / f"{sc.scene_id}_label.png"
        ref_img, ref_t, _, _ = read(ref.image_path)
        img, t, crs, _ = read(sc.image_path)
        assert crs is not None and crs.to_epsg() == 32618
        assert t.almost_equals(ref_t)
        # World file: pixel-centre convention.
        a, d, b, e, c, f = (float(v) for v in sc.image_path.with_suffix(".jgw").read_text().split())
        assert (a, d, b, e) == pytest.approx((GSD, 0, 0, -GSD))
        assert (c, f) == pytest.approx((ref_t.c + GSD / 2, ref_t.f - GSD / 2))
        prj = rasterio.crs.CRS.from_wkt(sc.image_path.with_suffix(".prj").read_text())
        assert prj.to_epsg() == 32618
        assert (
            sc.label_path.with_suffix(".pgw").read_text()
            == sc.image_path.with_suffix(".jgw").read_text()
        )
        lab, lt, lcrs, _ = read(sc.label_path)
        assert lcrs is not None and lcrs.to_epsg() == 32618 and lt.almost_equals(ref_t)
        assert np.array_equal(lab, read(ref.label_path)[0])  # PNG is lossless
        inside = ref_img.any(axis=0)
        diff = np.abs(img.astype(int) - ref_img.astype(int))[:, inside]
        assert diff.mean() < 6  # only JPEG loss
        assert (img[:, ~inside] <= 12).all(axis=0).mean() > 0.99  # black collar


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_noaa_jpg_frames_and_corner_csv(noaa: SyntheticStorm, storm: SyntheticStorm) -> None:
    out = noaa.out_dir
    assert noaa.catalog_csv == out / "catalog.csv"
    with noaa.catalog_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "file", "flight", "datetime",
        "ul_lat", "ul_lon", "ur_lat", "ur_lon", "lr_lat", "lr_lon", "ll_lat", "ll_lon",
    ]  # fmt: skip
    assert len(rows) == 6 and len({r["file"] for r in rows}) == 6
    frame = SIZE * GSD
    for row, sc, ref in zip(rows, noaa.scenes, storm.scenes, strict=True):
        assert re.fullmatch(r"P\d{8}", sc.scene_id)
        assert row["file"] == f"{sc.flight}_jpgs/jpgs/{sc.scene_id}.jpg"
        assert sc.image_path == out / row["file"]
        assert sc.label_path == sc.image_path.with_name(f"{sc.scene_id}_label.png")
        assert row["flight"] == sc.flight and row["datetime"] == sc.datetime
        img = read(sc.image_path)[0]
        lab = read(sc.label_path)[0][0]
        assert img.shape == (3, SIZE, SIZE) and lab.shape == (SIZE, SIZE)
        assert (img.max(axis=0) > 12).all()  # no collar: the whole camera frame is valid
        assert set(np.unique(lab)) <= set(range(DEMO_CLASSES.nclasses))

        lons = [float(row[f"{k}_lon"]) for k in ("ul", "ur", "lr", "ll")]
        lats = [float(row[f"{k}_lat"]) for k in ("ul", "ur", "lr", "ll")]
        xs, ys = warp_transform("EPSG:4326", "EPSG:32618", lons, lats)
        p = np.array([xs, ys]).T
        # A rotated square of the frame's ground size ...
        sides = np.linalg.norm(np.roll(p, -1, axis=0) - p, axis=1)
        assert sides == pytest.approx([frame] * 4, abs=0.05)
        assert np.linalg.norm(p[2] - p[0]) == pytest.approx(frame * math.sqrt(2), abs=0.05)
        right = p[1] - p[0]
        tilt = math.degrees(math.atan2(right[1], right[0])) % 180
        assert 1 < min(tilt, 180 - tilt) < 10
        # ... that coincides with the valid footprint of the same frame as a GeoTIFF.
        ref_img, t, _, _ = read(ref.image_path)
        rows_v, cols_v = np.nonzero(ref_img.any(axis=0))
        vx = t.c + (cols_v + 0.5) * GSD
        vy = t.f - (rows_v + 0.5) * GSD
        assert p[:, 0].min() == pytest.approx(vx.min(), abs=1.5 * GSD)
        assert p[:, 0].max() == pytest.approx(vx.max(), abs=1.5 * GSD)
        assert p[:, 1].min() == pytest.approx(vy.min(), abs=1.5 * GSD)
        assert p[:, 1].max() == pytest.approx(vy.max(), abs=1.5 * GSD)
        # Camera pixels placed with the corners land on the same ground class as the GeoTIFF.
        rr, cc = np.mgrid[0:SIZE:7, 0:SIZE:7]
        u, v = (cc + 0.5) / SIZE, (rr + 0.5) / SIZE
        wx = p[0, 0] + u * (p[1, 0] - p[0, 0]) + v * (p[3, 0] - p[0, 0])
        wy = p[0, 1] + u * (p[1, 1] - p[0, 1]) + v * (p[3, 1] - p[0, 1])
        ref_lab = read(ref.label_path)[0][0]
        gr = np.clip(((t.f - wy) / GSD).astype(int), 0, ref_lab.shape[0] - 1)
        gc = np.clip(((wx - t.c) / GSD).astype(int), 0, ref_lab.shape[1] - 1)
        assert (ref_lab[gr, gc] == lab[rr, cc]).mean() >= 0.95


def test_tar_packs_each_flight(tmp_path: Path) -> None:
    s = generate_storm("t", tmp_path / "g", scenes=4, seed=2, size=256, gsd=2.4, tar=True)
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted(p.name for p in s.tars)
    for archive in s.tars:
        flight = archive.stem
        with tarfile.open(archive) as tf:
            files = {m.name for m in tf.getmembers() if m.isfile()}
        expected = {
            p.relative_to(s.out_dir).as_posix()
            for sc in s.scenes
            if sc.flight == flight
            for p in (sc.image_path, sc.label_path)
            if p is not None
        }
        assert files == expected and all(f.startswith(f"{flight}/") for f in files)
    n = generate_storm("t", tmp_path / "n", 4, 2, "noaa-jpg", size=256, gsd=2.4, tar=True)
    assert n.catalog_csv is not None and n.catalog_csv.is_file()
    names = sorted(p.name for p in (tmp_path / "n").iterdir())
    assert names == sorted(["catalog.csv", *(p.name for p in n.tars)])
    members: set[str] = set()
    for archive in n.tars:
        with tarfile.open(archive) as tf:
            members |= {m.name for m in tf.getmembers() if m.isfile()}
    with n.catalog_csv.open() as fh:
        assert {r["file"] for r in csv.DictReader(fh)} <= members
    assert all(
        re.fullmatch(r"\d{8}[a-c]_RGB_jpgs/jpgs/P\d{8}(_label\.png|\.jpg)", m) for m in members
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fmt": "png"},
        {"scenes": 0},
        {"size": 128},
        {"gsd": 0.0},
        {"name": "Bad Name"},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    args = {"name": "t", "out_dir": tmp_path / "out", "scenes": 1, "size": 256, **kwargs}
    with pytest.raises(ValueError, match=r"format|scenes|size|gsd|storm name"):
        generate_storm(**args)
    assert not (tmp_path / "out").exists()


def test_formats_constant() -> None:
    assert FORMATS == ("geotiff", "jpeg", "noaa-jpg")
