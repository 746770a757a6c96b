"""Procedural NOAA-like post-hurricane storm: aerial RGB frames and label rasters.

The ground is a deterministic function of UTM world coordinates and the seed: a barrier island
on the Outer Banks (Rodanthe/Hatteras, NC, EPSG:32618) with the Atlantic to the east, beach and
overwash sand, dunes and shrubs, houses, a main road and side streets, marsh along Pamlico Sound
to the west. Overlapping frames therefore show the same ground. Frames are shot along 1-3
north-south flight lines, each rotated by the flight's crab angle.

What makes a place hard for a segmentation model varies smoothly in space: haze, cloud shadows,
sun glint, turbid water that looks like sand, wet sand that looks like water, sand-covered roads,
debris, plus per-flight colour casts. Labels always give the true class:

* turbid water, glint and surf foam stay ``water``; wet sand stays ``sand``;
* a road under an overwash veneer stays ``development`` (the road is still there; only its
  colour is blended up to 85 % toward sand), whereas overwash sand on vegetation is ``sand``;
* debris piles keep the class of the ground they lie on (``sand`` or ``vegetation``).

Everything is vectorised numpy; noise is value noise gathered from small hashed lattice tables.
"""

from __future__ import annotations

import csv
import math
import re
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from iou_maps.models.classes import DEVELOPMENT, NODATA_LABEL, SAND, VEGETATION, WATER

FORMATS: tuple[str, ...] = ("geotiff", "jpeg", "noaa-jpg")
EPSG = 32618
STORM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

#: Local origin (UTM 18N) near lon -75.47, lat 35.55: world maths runs in float32 metres from
#: here, which keeps millimetre precision (UTM northings do not fit float32 exactly).
ORIGIN_X = 457400.0
ORIGIN_Y = 3934140.0
#: Darkest valid value: ingest treats JPEG pixels <= 12 in every band as collar.
MIN_VALID = 24
JPEG_QUALITY = 90

Array = np.ndarray


@dataclass
class SyntheticScene:
    """One generated scene: its id, flight, image and label files, and time."""

    scene_id: str
    flight: str
    image_path: Path
    label_path: Path | None
    datetime: str


@dataclass
class SyntheticStorm:
    """A generated storm: its scenes and where they were written."""

    name: str
    out_dir: Path
    scenes: list[SyntheticScene]
    catalog_csv: Path | None
    tars: list[Path]


# --------------------------------------------------------------------------- noise


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_PX = np.uint64(0x9E3779B97F4A7C15)
_PY = np.uint64(0xC2B2AE3D27D4EB4F)


def _key(seed: int, salt: int) -> np.uint64:
    return np.uint64((seed * 0x100000001B3 + salt * 0x9E3779B1 + 0x5BD1E995) % 2**64)


def _hash(ix: Array, iy: Array, key: np.uint64) -> Array:
    """splitmix64-style avalanche of integer lattice coordinates (uint64 arithmetic wraps)."""
    h = (ix.astype(np.uint64) * _PX) ^ (iy.astype(np.uint64) * _PY) ^ key
    h ^= h >> np.uint64(31)
    h *= _M1
    h ^= h >> np.uint64(29)
    h *= _M2
    h ^= h >> np.uint64(32)
    return h


def _u01(h: Array, shift: int = 40) -> Array:
    """24 bits of a hash as float32 in [0, 1); other shifts give independent-ish values."""
    return ((h >> np.uint64(shift)) & np.uint64(0xFFFFFF)).astype(np.float32) * np.float32(2**-24)


def _smooth(t: Array) -> Array:
    return t * t * (3 - 2 * t)


def _noise2(x: Array, y: Array, scale: float, key: np.uint64) -> Array:
    """Value noise in [0, 1]: hash only the lattice nodes spanned by the points, then gather."""
    if x.size == 0:
        return np.zeros(0, np.float32)
    fx = x * np.float32(1 / scale)
    fy = y * np.float32(1 / scale)
    ix = np.floor(fx)
    iy = np.floor(fy)
    tx = _smooth(fx - ix)
    ty = _smooth(fy - iy)
    ix = ix.astype(np.int64)
    iy = iy.astype(np.int64)
    x0, y0 = int(ix.min()), int(iy.min())
    nx = int(ix.max()) - x0 + 2
    ny = int(iy.max()) - y0 + 2
    gx = np.arange(x0, x0 + nx, dtype=np.int64)
    gy = np.arange(y0, y0 + ny, dtype=np.int64)
    table = _u01(_hash(gx[None, :], gy[:, None], key)).ravel()
    i = (iy - y0) * nx + (ix - x0)
    v00, v10 = table[i], table[i + 1]
    v01, v11 = table[i + nx], table[i + nx + 1]
    top = v00 + (v10 - v00) * tx
    bottom = v01 + (v11 - v01) * tx
    return top + (bottom - top) * ty


def _fbm2(x: Array, y: Array, scale: float, key: np.uint64, octaves: int = 2) -> Array:
    """Fractal value noise, rescaled so that it spreads over roughly [0, 1]."""
    total = np.zeros(x.shape, np.float32)
    weight = 0.0
    for o in range(octaves):
        w = 0.5**o
        total += np.float32(w) * _noise2(x, y, scale * 0.5**o, key + np.uint64(o * 7919))
        weight += w
    total *= np.float32(1 / weight)
    # Summed octaves crowd around 0.5: stretch so thresholds behave alike for any octave count.
    stretch = 1.0 + 0.45 * (octaves - 1)
    return np.clip((total - 0.5) * np.float32(stretch) + 0.5, 0, 1)


def _noise1(y: Array, scale: float, key: np.uint64) -> Array:
    """1-D value noise in [-1, 1] (float64, used on the small along-island profile grid)."""
    fy = y / scale
    iy = np.floor(fy)
    t = fy - iy
    t = t * t * (3 - 2 * t)
    iy = iy.astype(np.int64)
    a = _u01(_hash(iy, np.zeros_like(iy), key)).astype(np.float64)
    b = _u01(_hash(iy + 1, np.zeros_like(iy), key)).astype(np.float64)
    return 2 * (a + (b - a) * t) - 1


#: Smooth 2-D fields (name: scale m, octaves, salt). They are evaluated on a global lattice and
#: interpolated, which is far cheaper per pixel than evaluating each octave of each field.
_FIELDS: dict[str, tuple[float, int, int]] = {
    "coves": (260, 2, 1), "creeks": (60, 2, 2), "ponds": (28, 2, 3), "beach_edge": (22, 1, 4),
    "dune_sand": (14, 2, 5), "lobes": (70, 2, 6), "kind": (45, 2, 23), "damp": (40, 2, 24),
    "turbid": (320, 2, 25), "wave": (40, 1, 26), "glint": (280, 2, 27), "cover": (12, 1, 28),
    "hard": (500, 2, 30), "haze": (380, 2, 31), "cloud": (160, 3, 32), "debris": (240, 2, 51),
}  # fmt: skip


class _Lattice:
    """Fields sampled on a lattice anchored at global multiples of STEP, bilinearly interpolated.

    The samples depend only on the lattice node's world position, so the result is still a
    function of world coordinates: overlapping scenes see identical values.
    """

    STEP = 2.5

    def __init__(self, x: Array, y: Array) -> None:
        fx = x * np.float32(1 / self.STEP)
        fy = y * np.float32(1 / self.STEP)
        ix = np.floor(fx)
        iy = np.floor(fy)
        self.tx = fx - ix
        self.ty = fy - iy
        ix = ix.astype(np.int64)
        iy = iy.astype(np.int64)
        x0, y0 = int(ix.min()), int(iy.min())
        self.nx = int(ix.max()) - x0 + 2
        ny = int(iy.max()) - y0 + 2
        self.i = (iy - y0) * self.nx + (ix - x0)
        gx = (np.arange(x0, x0 + self.nx) * self.STEP).astype(np.float32)
        gy = (np.arange(y0, y0 + ny) * self.STEP).astype(np.float32)
        self.gx = np.broadcast_to(gx[None, :], (ny, self.nx)).ravel()
        self.gy = np.broadcast_to(gy[:, None], (ny, self.nx)).ravel()

    def __call__(self, seed: int, name: str, m: Array | None = None) -> Array:
        """Field ``name`` at the points (or at the points selected by boolean mask ``m``)."""
        scale, octaves, salt = _FIELDS[name]
        table = _fbm2(self.gx, self.gy, scale, _key(seed, salt), octaves)
        i, tx, ty = (self.i, self.tx, self.ty) if m is None else (self.i[m], self.tx[m], self.ty[m])
        v00, v10 = table[i], table[i + 1]
        v01, v11 = table[i + self.nx], table[i + self.nx + 1]
        top = v00 + (v10 - v00) * tx
        return top + (v01 + (v11 - v01) * tx - top) * ty


# --------------------------------------------------------------------------- the island


class _Profile:
    """Island cross-section as smooth functions of northing, tabulated every 0.5 m.

    The table is anchored on global multiples of the step, so every scene interpolates the
    same samples and overlapping scenes agree exactly.
    """

    STEP = 0.5

    def __init__(self, ymin: float, ymax: float, seed: int) -> None:
        self.j0 = math.floor(ymin / self.STEP) - 2
        n = math.ceil(ymax / self.STEP) - self.j0 + 3
        y = (self.j0 + np.arange(n, dtype=np.float64)) * self.STEP

        def k(salt: int) -> np.uint64:
            return _key(seed, 1000 + salt)

        xc = 100 * _noise1(y, 5000, k(1)) + 40 * _noise1(y, 1500, k(2))
        width = 680 + 230 * _noise1(y, 3000, k(3))
        ocean = xc + width / 2 + 10 * _noise1(y, 180, k(4)) + 4 * _noise1(y, 55, k(5))
        beach = ocean - (42 + 18 * _noise1(y, 500, k(6)))
        dune = beach - (36 + 14 * _noise1(y, 300, k(7)))
        sound = xc - width / 2 + 35 * _noise1(y, 350, k(8))
        marsh = sound + 95 + 55 * _noise1(y, 420, k(9))
        # NC-12 follows the smooth island, well behind the dunes.
        road = xc + width / 2 - 150 + 6 * _noise1(y, 900, k(10))
        wet = 12 + 10 * _noise1(y, 250, k(11))
        # Overwash: episodic along the island, strongest where the island is narrow.
        wash_raw = 0.5 + 0.5 * _noise1(y, 450, k(12)) + 0.15 * (600 - width) / 230
        wash = np.clip((wash_raw - 0.62) / 0.3, 0, 1)
        self.fields: dict[str, Array] = {
            name: arr.astype(np.float32)
            for name, arr in dict(
                ocean=ocean, beach=beach, dune=dune, sound=sound, marsh=marsh, road=road,
                wet=wet, wash=wash,
            ).items()
        }  # fmt: skip

    def sampler(self, y: Array) -> Callable[[str], Array]:
        f = y / np.float32(self.STEP) - np.float32(self.j0)
        i = np.floor(f)
        t = (f - i).astype(np.float32)
        i = i.astype(np.int64)

        def get(name: str) -> Array:
            a = self.fields[name]
            lo = a[i]
            return lo + (a[i + 1] - lo) * t

        return get


ROOFS = np.array(
    [
        (118, 118, 122), (146, 92, 72), (205, 203, 196), (92, 74, 64), (172, 160, 138),
        (70, 78, 92), (160, 70, 58), (62, 98, 168),  # the last: a blue tarp on a damaged roof
    ],
    np.float32,
)  # fmt: skip
CELL = 32.0  # house lot grid (m); every 4th row of lots is a side street
DEBRIS_CELL = 14.0


@dataclass(frozen=True)
class _Look:
    """Per-flight imaging conditions."""

    gain: tuple[float, float, float]
    offset: float
    glint: float


def render_world(
    x: Array, y: Array, seed: int, look: _Look | None = None, r2: Array | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[Array, Array]:  # fmt: skip
    """Labels and RGB at local world points (metres from ORIGIN_X/ORIGIN_Y, float32, 1-D).

    ``look`` sets the flight's colour cast and glint, ``r2`` the squared normalised distance from
    the frame centre (vignetting), ``rng`` the sensor noise. Returns (label uint8 [N],
    rgb uint8 [N, 3]); labels depend only on the points and the seed.
    """
    look = look or _Look((1.0, 1.0, 1.0), 0.0, 0.5)
    n = x.size
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros((0, 3), np.uint8)

    def k(salt: int) -> np.uint64:
        return _key(seed, salt)

    prof = _Profile(float(y.min()), float(y.max()), seed).sampler(y)
    ocean, beach, dune = prof("ocean"), prof("beach"), prof("dune")
    sound, marsh, road_x = prof("sound"), prof("marsh"), prof("road")

    # ---- land cover (labels)
    lat = _Lattice(x, y)

    def field(name: str, m: Array) -> Array:
        """A lattice field on the points of ``m`` only (0 elsewhere): most are local."""
        out = np.zeros(n, np.float32)
        out[m] = lat(seed, name, m)
        return out

    near_sound = x < sound + 50  # the coves below move the shore by at most +-50 m
    coves = 60 * (field("coves", near_sound) - 0.5) + 40 * (field("creeks", near_sound) - 0.5)
    sound_water = near_sound & (x < sound + coves)
    in_marsh = (x >= sound) & (x < marsh)
    ponds = in_marsh & (field("ponds", in_marsh) > 0.74)
    ocean_water = x > ocean
    near_beach = np.abs(x - beach) < 3.5
    on_beach = (x > beach + 3.5) | (
        near_beach & (x > beach + 7 * (field("beach_edge", near_beach) - 0.5))
    )
    in_dune = (x > dune) & ~on_beach
    dune_sand = in_dune & (field("dune_sand", in_dune) > 0.6)
    # Overwash fans reach inland from the beach; lobes from 2-D noise.
    wash = prof("wash")
    width = ocean - sound
    maybe_fan = (wash > 0) & (x > ocean - 1.15 * wash * width)
    reach = wash * width * (0.25 + 0.9 * field("lobes", maybe_fan))
    fan = maybe_fan & (x > ocean - reach)

    road = np.abs(x - road_x) < 4.5
    dev_zone = (x > marsh + 12) & (x < dune - 6)
    # Side streets run east-west through the lot rows left free for them (see _houses).
    row = np.floor(y * np.float32(1 / CELL)).astype(np.int64)
    street_on = _u01(_hash(row, np.zeros_like(row), k(7))) < 0.85
    street = (row % 4 == 0) & street_on & (np.abs(y - (row + 0.5) * CELL) < 3.5) & dev_zone
    # Houses (and their shadows) only exist well inside the lot zone: evaluate them there.
    lots = (x > marsh + 14) & (x < dune - 8)
    house = np.zeros(n, bool)
    shadow = np.zeros(n, bool)
    roof_rgb = np.zeros((n, 3), np.float32)
    shade = np.ones(n, np.float32)
    if lots.any():
        house[lots], roof_rgb[lots], shade[lots], shadow[lots] = _houses(x[lots], y[lots], seed)

    label = np.full(n, VEGETATION, np.uint8)
    sand = on_beach | dune_sand | fan
    label[sand] = SAND
    dev = road | street | house
    label[dev] = DEVELOPMENT
    water = ocean_water | sound_water | ponds
    label[water] = WATER

    # ---- colours
    rgb = np.empty((n, 3), np.float32)
    tex = _noise2(x, y, 4.0, k(20)) - 0.5  # ground texture shared by all classes
    fine = _noise2(x, y, 1.3, k(21)) - 0.5
    speck = _hash(np.floor(x * 1.7).astype(np.int64), np.floor(y * 1.7).astype(np.int64), k(22))

    # Difficulty: a slow field; where it is high, haze, shadows, turbidity, glint, debris pile up.
    hard = lat(seed, "hard")

    m = label == VEGETATION
    if m.any():
        kind = lat(seed, "kind", m)[:, None]
        shrub = np.array([52, 78, 44], np.float32)
        grass = np.array([118, 126, 74], np.float32)
        marsh_c = np.array([104, 100, 62], np.float32)
        col = shrub + (grass - shrub) * kind
        mm = in_marsh[m][:, None]
        col = np.where(mm, marsh_c + 20 * (kind - 0.5), col)
        rgb[m] = col * (1 + 0.55 * tex[m, None] + 0.35 * fine[m, None])
    m = label == SAND
    if m.any():
        dry = np.array([214, 198, 166], np.float32)
        wet_c = np.array([128, 118, 100], np.float32)
        wet_w = prof("wet")[m]
        dist = ocean[m] - x[m]
        wetness = np.clip(1 - dist / wet_w, 0, 1)
        # Damp overwash patches, more of them in hard places.
        damp = np.clip((lat(seed, "damp", m) - 0.75 + 0.3 * hard[m]) * 3, 0, 0.8)
        wetness = np.maximum(wetness, damp)[:, None]
        col = dry + (wet_c - dry) * wetness
        rgb[m] = col * (1 + 0.12 * tex[m, None] + 0.08 * fine[m, None])
    m = label == WATER
    if m.any():
        xm, hm = x[m], hard[m]
        is_ocean = ocean_water[m][:, None]
        deep = np.where(
            is_ocean, np.array([26, 66, 92], np.float32), np.array([50, 80, 94], np.float32)
        )
        shallow_d = np.where(is_ocean[:, 0], xm - ocean[m], sound[m] + coves[m] - xm)
        shallow = np.clip(1 - shallow_d / 70, 0, 1)[:, None]
        col = deep + (np.array([70, 118, 122], np.float32) - deep) * shallow * 0.6
        # Turbid / shallow water drifts toward the colour of sand.
        turb = np.clip((lat(seed, "turbid", m) - 0.6 + 0.8 * (hm - 0.5)) * 2.2, 0, 0.85)
        turb = np.maximum(turb, 0.5 * shallow[:, 0] * hm)[:, None]
        col = col + (np.array([172, 156, 122], np.float32) - col) * turb
        # Surf: foam bands on the ocean side within ~30 m of the beach.
        d = np.where(is_ocean[:, 0], xm - ocean[m], 1e3)
        wave = np.sin(d * 0.35 + 6 * lat(seed, "wave", m))
        foam = np.clip((wave - 0.55) * 2.5, 0, 1) * np.clip(1 - d / 30, 0, 1)
        col = col + (np.array([225, 228, 222], np.float32) - col) * foam[:, None]
        rgb[m] = col * (1 + 0.06 * tex[m, None] + 0.05 * fine[m, None])
        # Sun glint: bright speckle, strength from the flight's sun angle and a slow field.
        glint_area = np.clip((lat(seed, "glint", m) - 0.5) * 2.5, 0, 1) * np.clip(
            (hm - 0.35) * 3, 0, 1
        )
        p_glint = look.glint * glint_area * 0.35
        sparkle = _u01(speck[m]) < p_glint
        rgb[m] = np.where(sparkle[:, None], np.float32(240), rgb[m])
    m = label == DEVELOPMENT
    if m.any():
        asphalt = np.array([84, 84, 90], np.float32)
        street_c = np.array([112, 110, 106], np.float32)
        col = np.where(street[m][:, None], street_c, asphalt)
        col = np.where(house[m][:, None], roof_rgb[m] * shade[m][:, None], col)
        # Sand over roads (label stays development): colour blended 35-85 % toward sand.
        covered = (fan[m] & ~house[m])[:, None]
        cov = 0.35 + 0.5 * lat(seed, "cover", m)[:, None]
        col = np.where(covered, col + (np.array([208, 192, 160], np.float32) - col) * cov, col)
        rgb[m] = col * (1 + 0.08 * tex[m, None] + 0.1 * fine[m, None])
    # House shadows fall on the ground next to them (image only).
    rgb[shadow & ~dev & ~water] *= np.float32(0.55)

    # Debris piles on sand and vegetation (mixed colours, class unchanged).
    land = (label == SAND) | (label == VEGETATION)
    debris = np.zeros(n, bool)
    debris[land] = _debris(
        x[land], y[land], lat(seed, "debris", land), hard[land], fine[land], seed
    )
    if debris.any():
        palette = np.array(
            [[96, 70, 50], [200, 196, 188], [128, 124, 120], [160, 130, 95]], np.float32
        )
        pick = (speck[debris] >> np.uint64(13)) % np.uint64(4)
        rgb[debris] = palette[pick.astype(np.int64)] * (1 + 0.4 * fine[debris, None])

    # ---- atmosphere and camera
    haze = np.clip((lat(seed, "haze") - 0.55) * 3, 0, 1) * np.clip((hard - 0.5) * 4, 0, 1)
    haze = (0.7 * haze)[:, None]
    rgb += (np.array([196, 200, 206], np.float32) - rgb) * haze
    cloud = np.clip((lat(seed, "cloud") - 0.78 + 0.25 * (hard - 0.5)) * 8, 0, 1)
    rgb *= (1 - cloud * (0.2 + 0.4 * hard))[:, None]
    rgb = rgb * np.asarray(look.gain, np.float32) + np.asarray(look.offset, np.float32)
    if r2 is not None:
        rgb *= (1 - 0.14 * r2)[:, None]
    if rng is not None:
        rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(3.0)
    out = np.clip(rgb, MIN_VALID, 255).astype(np.uint8)
    return label, out


def _cells(x: Array, y: Array, cell: float) -> tuple[Array, Array, Array]:
    """Integer cell coordinates (gx, gy) of the cells the points span, and each point's cell."""
    cx = np.floor(x * np.float32(1 / cell)).astype(np.int64)
    cy = np.floor(y * np.float32(1 / cell)).astype(np.int64)
    x0, y0 = int(cx.min()), int(cy.min())
    nx, ny = int(cx.max()) - x0 + 1, int(cy.max()) - y0 + 1
    gx = np.broadcast_to(np.arange(x0, x0 + nx, dtype=np.int64)[None, :], (ny, nx)).ravel()
    gy = np.broadcast_to(np.arange(y0, y0 + ny, dtype=np.int64)[:, None], (ny, nx)).ravel()
    return gx, gy, (cy - y0) * nx + (cx - x0)


def _houses(x: Array, y: Array, seed: int) -> tuple[Array, Array, Array, Array]:
    """Houses on jittered lots: (inside roof, roof RGB [N, 3], ridge shading, cast shadow).

    Every 4th row of lots is left for a side street. Per-lot values are hashed once per lot.
    """
    gx, gy, idx = _cells(x, y, CELL)
    h = _hash(gx, gy, _key(seed, 40))
    hx = (gx + 0.5) * CELL + (_u01(h, 0) - 0.5) * 8
    hy = (gy + 0.5) * CELL + (_u01(h, 20) - 0.5) * 6
    hw = 5 + 5 * _u01(h, 40)
    hh = 4 + 5 * _u01(_hash(gx, gy, _key(seed, 41)), 40)
    # The lot must lie between marsh and dunes, off the main road, at the local density.
    lot = _Profile(float(hy.min()), float(hy.max()), seed).sampler(hy.astype(np.float32))
    density = 0.25 + 0.6 * _noise2(hx, hy, 550, _key(seed, 42))
    ok = (
        (gy % 4 != 0)
        & (_u01(h, 10) < density)
        & (hx - hw > lot("marsh") + 18)
        & (hx + hw < lot("dune") - 10)
        & (np.abs(hx - lot("road")) > hw + 12)
    )
    pick = (h % np.uint64(len(ROOFS) - 1)).astype(np.int64)
    pick[_u01(h, 30) < 0.06] = len(ROOFS) - 1  # a few blue tarps
    roof = ROOFS[pick]
    dx = x - hx[idx]
    dy = y - hy[idx]
    w, hgt, on = hw[idx], hh[idx], ok[idx]
    inside = on & (np.abs(dx) < w) & (np.abs(dy) < hgt)
    # Ridge along the long side: one roof face catches more light.
    shade = np.where(np.where(w > hgt, dy, dx) > 0, np.float32(1.0), np.float32(0.84))
    # Low sun from the south-east: shadow on the north-west side.
    shadow = on & ~inside & (np.abs(dx + 2.5) < w) & (np.abs(dy - 2.5) < hgt)
    return inside, roof[idx], shade, shadow


def _debris(x: Array, y: Array, field: Array, hard: Array, fine: Array, seed: int) -> Array:
    """Debris blobs on a jittered grid; denser where the difficulty field is high."""
    if x.size == 0:
        return np.zeros(0, bool)
    gx, gy, idx = _cells(x, y, DEBRIS_CELL)
    h = _hash(gx, gy, _key(seed, 50))
    bx = ((gx + 0.5) * DEBRIS_CELL + (_u01(h, 0) - 0.5) * 6)[idx]
    by = ((gy + 0.5) * DEBRIS_CELL + (_u01(h, 20) - 0.5) * 6)[idx]
    radius = (2 + 3.5 * _u01(h, 40))[idx] * (1 + 0.5 * fine)
    density = np.clip((field - 0.55) * 2 + (hard - 0.5), 0, 0.6)
    return (_u01(h, 10)[idx] < density) & ((x - bx) ** 2 + (y - by) ** 2 < radius**2)


# --------------------------------------------------------------------------- flights and frames


@dataclass(frozen=True)
class _Frame:
    flight: str
    line: int
    index: int  # 1-based within the flight
    cx: float  # frame centre, UTM
    cy: float
    heading: float  # degrees clockwise from north of the image's up direction
    when: datetime
    pnum: int
    look: _Look


def _plan(seed: int, scenes: int, size: int, gsd: float) -> list[_Frame]:
    """Frames along 1-3 north-south lines over the island, alternating flight directions."""
    rng = np.random.default_rng([seed, 7])
    lines = 1 if scenes <= 3 else 2 if scenes <= 8 else 3
    per_line = [scenes // lines + (1 if i < scenes % lines else 0) for i in range(lines)]
    extent = size * gsd
    day = datetime(2019, 9, 7, tzinfo=UTC) + timedelta(days=int(rng.integers(0, 3)))
    # Start somewhere between Salvo and Rodanthe, leaving room northward.
    y_start = float(rng.uniform(800, 5500))
    mid_y = y_start + 0.5 * max(per_line) * extent * 0.7
    prof = _Profile(mid_y - 1, mid_y + 1, seed).sampler(np.array([mid_y], np.float32))
    island_x = float((prof("ocean")[0] + prof("sound")[0]) / 2)
    side_overlap = float(rng.uniform(0.28, 0.38))
    spacing = extent * (1 - side_overlap)
    pbase = 20_000_000 + int(rng.integers(0, 6_000_000))
    frames: list[_Frame] = []
    for line, count in enumerate(per_line):
        name = f"{day:%Y%m%d}{chr(ord('a') + line)}_RGB"
        crab = float(rng.uniform(2.0, 6.0) * rng.choice([-1.0, 1.0]))
        northbound = line % 2 == 0
        overlap = float(rng.uniform(0.25, 0.4))
        step = extent * (1 - overlap)
        start = day + timedelta(hours=13, minutes=int(30 + 95 * line + rng.integers(0, 20)))
        interval = max(1, round(step / 62.0))  # ~62 m/s ground speed between exposures
        look = _Look(
            gain=tuple(float(g) for g in 1 + rng.uniform(-0.09, 0.09, 3)),  # type: ignore[arg-type]
            offset=float(rng.uniform(-8, 8)),
            glint=float(rng.uniform(0.3, 1.0)),
        )
        line_x = ORIGIN_X + island_x + (line - (lines - 1) / 2) * spacing
        for i in range(count):
            along = i if northbound else count - 1 - i
            cy = ORIGIN_Y + y_start + along * step + float(rng.uniform(-4, 4))
            cx = line_x + float(rng.uniform(-6, 6))
            heading = (0.0 if northbound else 180.0) + crab + float(rng.uniform(-0.4, 0.4))
            frames.append(
                _Frame(
                    flight=name, line=line, index=i + 1, cx=cx, cy=cy, heading=heading,
                    when=start + timedelta(seconds=i * interval),
                    pnum=pbase + line * 100_000 + i * 3, look=look,
                )
            )  # fmt: skip
    return frames


def _axes(frame: _Frame) -> tuple[float, float, float, float]:
    """Unit vectors (east, north) of the image's column (right) and row (down) directions."""
    t = math.radians(frame.heading)
    fx, fy = math.sin(t), math.cos(t)  # forward = image up
    return math.cos(t), -math.sin(t), -fx, -fy


def _frame_corners(frame: _Frame, size: int, gsd: float) -> list[tuple[float, float]]:
    """UTM outer corners ul, ur, lr, ll (pixel edges (0,0), (0,W), (H,W), (H,0))."""
    rx, ry, dx, dy = _axes(frame)
    half = size * gsd / 2
    out = []
    for r, c in ((0, 0), (0, size), (size, size), (size, 0)):
        u = c * gsd - half
        v = r * gsd - half
        out.append((frame.cx + u * rx + v * dx, frame.cy + u * ry + v * dy))
    return out


def _render_camera(frame: _Frame, size: int, gsd: float, seed: int) -> tuple[Array, Array]:
    """The frame in camera geometry: (rgb [size, size, 3], label [size, size])."""
    rx, ry, dx, dy = _axes(frame)
    c = (np.arange(size, dtype=np.float64) + 0.5) * gsd - size * gsd / 2
    u = np.broadcast_to(c[None, :], (size, size)).ravel()
    v = np.broadcast_to(c[:, None], (size, size)).ravel()
    x = (frame.cx - ORIGIN_X + u * rx + v * dx).astype(np.float32)
    y = (frame.cy - ORIGIN_Y + u * ry + v * dy).astype(np.float32)
    r2 = ((u * u + v * v) / (size * gsd / 2) ** 2).astype(np.float32)
    rng = np.random.default_rng([seed, frame.line, frame.index, 1])
    label, rgb = render_world(x, y, seed, frame.look, r2, rng)
    return rgb.reshape(size, size, 3), label.reshape(size, size)


def _render_northup(frame: _Frame, size: int, gsd: float, seed: int) -> tuple[Array, Array, Affine]:
    """The frame resampled on a north-up grid snapped to global multiples of ``gsd``.

    Returns (rgb [H, W, 3] with 0 outside the frame, label [H, W] with 255 outside, transform).
    Snapping makes all scenes share one pixel lattice, so overlaps compare pixel for pixel.
    """
    corners = _frame_corners(frame, size, gsd)
    xs = [p[0] for p in corners]
    ys = [p[1] for p in corners]
    xmin, xmax = math.floor(min(xs) / gsd) * gsd, math.ceil(max(xs) / gsd) * gsd
    ymin, ymax = math.floor(min(ys) / gsd) * gsd, math.ceil(max(ys) / gsd) * gsd
    width, height = round((xmax - xmin) / gsd), round((ymax - ymin) / gsd)
    transform = Affine(gsd, 0.0, xmin, 0.0, -gsd, ymax)
    ex = xmin - frame.cx + (np.arange(width) + 0.5) * gsd  # offsets from the frame centre
    ny = ymax - frame.cy - (np.arange(height) + 0.5) * gsd
    rx, ry, dx, dy = _axes(frame)
    half = size * gsd / 2
    u = ex[None, :] * rx + ny[:, None] * ry  # camera coords (m from centre)
    v = ex[None, :] * dx + ny[:, None] * dy
    valid = (np.abs(u) < half) & (np.abs(v) < half)
    x = np.broadcast_to(ex[None, :] + (frame.cx - ORIGIN_X), valid.shape)[valid]
    y = np.broadcast_to(ny[:, None] + (frame.cy - ORIGIN_Y), valid.shape)[valid]
    r2 = ((u[valid] ** 2 + v[valid] ** 2) / half**2).astype(np.float32)
    rng = np.random.default_rng([seed, frame.line, frame.index, 1])
    lab, col = render_world(x.astype(np.float32), y.astype(np.float32), seed, frame.look, r2, rng)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[valid] = col
    label = np.full((height, width), NODATA_LABEL, np.uint8)
    label[valid] = lab
    return rgb, label, transform


# --------------------------------------------------------------------------- writers


def _world_file(path: Path, transform: Affine) -> None:
    """ESRI world file: pixel sizes, rotations, then the centre of the upper-left pixel."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    lines = [a, d, b, e, c + a / 2 + b / 2, f + d / 2 + e / 2]
    path.write_text("".join(f"{v:.10f}\n" for v in lines))


def _sidecars(path: Path, world_suffix: str, transform: Affine, wkt: str) -> None:
    """World file + .prj (what NOAA ships) + a GDAL .aux.xml so GDAL/rasterio also see the CRS."""
    _world_file(path.with_suffix(world_suffix), transform)
    path.with_suffix(".prj").write_text(wkt)
    Path(f"{path}.aux.xml").write_text(f"<PAMDataset>\n  <SRS>{escape(wkt)}</SRS>\n</PAMDataset>\n")


def _write_geotiff(path: Path, array: Array, transform: Affine, nodata: int, tags: dict) -> None:
    bands = array.reshape(array.shape[0], array.shape[1], -1)
    profile = dict(
        driver="GTiff", width=bands.shape[1], height=bands.shape[0], count=bands.shape[2],
        dtype="uint8", crs=CRS.from_epsg(EPSG), transform=transform, nodata=nodata,
        tiled=True, blockxsize=256, blockysize=256, compress="deflate", zlevel=3,
    )  # fmt: skip
    if bands.shape[2] == 3:
        profile["photometric"] = "RGB"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(bands, 2, 0))
        dst.update_tags(**tags)


def _check_args(name: str, scenes: int, fmt: str, size: int, gsd: float) -> None:
    if not isinstance(name, str) or not STORM_NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid storm name {name!r}: use 1-64 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if not isinstance(scenes, int) or scenes < 1:
        raise ValueError(f"scenes must be an integer >= 1, got {scenes!r}")
    if not isinstance(size, int) or size < 256:
        raise ValueError(f"size must be an integer >= 256 pixels, got {size!r}")
    if not (isinstance(gsd, int | float) and math.isfinite(gsd) and gsd > 0):
        raise ValueError(f"gsd must be a positive number of metres, got {gsd!r}")


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_storm(
    name: str,
    out_dir: Path,
    scenes: int = 6,
    seed: int = 0,
    fmt: str = "geotiff",
    size: int = 1536,
    gsd: float = 0.4,
    tar: bool = False,
    labels: bool = True,
    progress: Callable[[int], None] | None = None,
) -> SyntheticStorm:
    """Write a synthetic storm under ``out_dir`` in one of FORMATS; see the module docstring.

    ``size`` is the camera frame's width and height in pixels, ``gsd`` its pixel size in metres.
    With ``tar`` each flight folder becomes ``out_dir/<flight>.tar`` (member names relative to
    ``out_dir``, so a scene's member is ``image_path.relative_to(out_dir)``) and the folder is
    removed. ``progress(1)`` is called after each scene.
    """
    _check_args(name, scenes, fmt, size, gsd)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = _plan(seed, scenes, size, gsd)
    wkt = CRS.from_epsg(EPSG).to_wkt()
    result: list[SyntheticScene] = []
    folders: dict[str, Path] = {}
    rows: list[list[str]] = []
    for frame in frames:
        when = _iso(frame.when)
        tags = {
            "TIFFTAG_DATETIME": frame.when.strftime("%Y:%m:%d %H:%M:%S"),
            "STORM": name, "FLIGHT": frame.flight, "DATETIME": when, "SEED": str(seed),
        }  # fmt: skip
        if fmt == "noaa-jpg":
            folder = out_dir / f"{frame.flight}_jpgs"
            jpgs = folder / "jpgs"
            jpgs.mkdir(parents=True, exist_ok=True)
            scene_id = f"P{frame.pnum:08d}"
            image = jpgs / f"{scene_id}.jpg"
            rgb, lab = _render_camera(frame, size, gsd, seed)
            Image.fromarray(rgb).save(image, quality=JPEG_QUALITY)
            label_path = jpgs / f"{scene_id}_label.png" if labels else None
            if label_path:
                Image.fromarray(lab).save(label_path, optimize=False)
            corners = _frame_corners(frame, size, gsd)
            lons, lats = warp_transform(
                CRS.from_epsg(EPSG), CRS.from_epsg(4326),
                [p[0] for p in corners], [p[1] for p in corners],
            )  # fmt: skip
            row = [image.relative_to(out_dir).as_posix(), frame.flight, when]
            for lat, lon in zip(lats, lons, strict=True):
                row += [f"{lat:.9f}", f"{lon:.9f}"]
            rows.append(row)
        else:
            folder = out_dir / frame.flight
            folder.mkdir(parents=True, exist_ok=True)
            scene_id = f"{frame.flight}_{frame.index:03d}"
            rgb, lab, transform = _render_northup(frame, size, gsd, seed)
            if fmt == "geotiff":
                image = folder / f"{scene_id}.tif"
                _write_geotiff(image, rgb, transform, 0, tags)
                label_path = folder / f"{scene_id}_label.tif" if labels else None
                if label_path:
                    _write_geotiff(label_path, lab, transform, NODATA_LABEL, tags)
            else:
                image = folder / f"{scene_id}.jpg"
                Image.fromarray(rgb).save(image, quality=JPEG_QUALITY)
                _sidecars(image, ".jgw", transform, wkt)
                label_path = folder / f"{scene_id}_label.png" if labels else None
                if label_path:
                    Image.fromarray(lab).save(label_path)
                    _sidecars(label_path, ".pgw", transform, wkt)
        folders[frame.flight] = folder
        result.append(SyntheticScene(scene_id, frame.flight, image, label_path, when))
        if progress:
            progress(1)

    catalog = None
    if fmt == "noaa-jpg":
        catalog = out_dir / "catalog.csv"
        with catalog.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                ["file", "flight", "datetime", "ul_lat", "ul_lon", "ur_lat", "ur_lon",
                 "lr_lat", "lr_lon", "ll_lat", "ll_lon"]
            )  # fmt: skip
            writer.writerows(rows)
    tars: list[Path] = []
    if tar:
        for flight, folder in folders.items():
            archive = out_dir / f"{flight}.tar"
            with tarfile.open(archive, "w") as tf:
                tf.add(folder, arcname=folder.relative_to(out_dir).as_posix())
            shutil.rmtree(folder)
            tars.append(archive)
    return SyntheticStorm(name, out_dir, result, catalog, tars)
