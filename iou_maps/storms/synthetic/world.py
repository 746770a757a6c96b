"""The ground of a synthetic storm: land cover (labels) and its colours at world points.

A barrier island (see the package docstring) as a deterministic function of local world
coordinates and the seed, so overlapping frames show the same ground; each flight adds its own
colour cast, glint, vignetting and sensor noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from iou_maps.storms.synthetic.noise import (
    Array,
    Lattice,
    lattice_hash,
    noise1,
    noise2,
    seed_key,
    u01,
)

#: The ground's covers, the ids ``render_world`` labels: the demo's four classes, and the
#: houses of ``DEVELOPMENT`` apart (``BUILDING``); ``classes.py`` maps them to a class set.
WATER, SAND, VEGETATION, DEVELOPMENT, BUILDING = range(5)

#: Local origin (UTM 18N) near lon -75.47, lat 35.55: world maths runs in float32 metres from
#: here, which keeps millimetre precision (UTM northings do not fit float32 exactly).
ORIGIN_X = 457400.0
ORIGIN_Y = 3934140.0
#: Darkest valid value: ingest treats JPEG pixels <= 12 in every band as collar.
MIN_VALID = 24


class Profile:
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
            return seed_key(seed, 1000 + salt)

        xc = 100 * noise1(y, 5000, k(1)) + 40 * noise1(y, 1500, k(2))
        width = 680 + 230 * noise1(y, 3000, k(3))
        ocean = xc + width / 2 + 10 * noise1(y, 180, k(4)) + 4 * noise1(y, 55, k(5))
        beach = ocean - (42 + 18 * noise1(y, 500, k(6)))
        dune = beach - (36 + 14 * noise1(y, 300, k(7)))
        sound = xc - width / 2 + 35 * noise1(y, 350, k(8))
        marsh = sound + 95 + 55 * noise1(y, 420, k(9))
        # NC-12 follows the smooth island, well behind the dunes.
        road = xc + width / 2 - 150 + 6 * noise1(y, 900, k(10))
        wet = 12 + 10 * noise1(y, 250, k(11))
        # Overwash: episodic along the island, strongest where the island is narrow.
        wash_raw = 0.5 + 0.5 * noise1(y, 450, k(12)) + 0.15 * (600 - width) / 230
        wash = np.clip((wash_raw - 0.62) / 0.3, 0, 1)
        self.fields: dict[str, Array] = {
            name: arr.astype(np.float32)
            for name, arr in dict(
                ocean=ocean, beach=beach, dune=dune, sound=sound, marsh=marsh, road=road,
                wet=wet, wash=wash,
            ).items()
        }  # fmt: skip

    def sampler(self, y: Array) -> Callable[[str], Array]:
        """A function of a field name giving that field at northings ``y`` (interpolated)."""
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
class Look:
    """Per-flight imaging conditions."""

    gain: tuple[float, float, float]
    offset: float
    glint: float


def render_world(
    x: Array, y: Array, seed: int, look: Look | None = None, r2: Array | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[Array, Array]:  # fmt: skip
    """Labels and RGB at local world points (metres from ORIGIN_X/ORIGIN_Y, float32, 1-D).

    ``look`` sets the flight's colour cast and glint, ``r2`` the squared normalised distance from
    the frame centre (vignetting), ``rng`` the sensor noise. Returns (label uint8 [N] of the
    covers ``WATER`` … ``BUILDING``,
    rgb uint8 [N, 3]); labels depend only on the points and the seed.
    """
    look = look or Look((1.0, 1.0, 1.0), 0.0, 0.5)
    n = x.size
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros((0, 3), np.uint8)

    def k(salt: int) -> np.uint64:
        return seed_key(seed, salt)

    prof = Profile(float(y.min()), float(y.max()), seed).sampler(y)
    ocean, beach, dune = prof("ocean"), prof("beach"), prof("dune")
    sound, marsh, road_x = prof("sound"), prof("marsh"), prof("road")

    # ---- land cover (labels)
    lat = Lattice(x, y)

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
    street_on = u01(lattice_hash(row, np.zeros_like(row), k(7))) < 0.85
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
    tex = noise2(x, y, 4.0, k(20)) - 0.5  # ground texture shared by all classes
    fine = noise2(x, y, 1.3, k(21)) - 0.5
    speck = lattice_hash(
        np.floor(x * 1.7).astype(np.int64), np.floor(y * 1.7).astype(np.int64), k(22)
    )

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
        sparkle = u01(speck[m]) < p_glint
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
    # Houses are development in the image above, a cover of their own in the label.
    label[house & (label == DEVELOPMENT)] = BUILDING
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
    h = lattice_hash(gx, gy, seed_key(seed, 40))
    hx = (gx + 0.5) * CELL + (u01(h, 0) - 0.5) * 8
    hy = (gy + 0.5) * CELL + (u01(h, 20) - 0.5) * 6
    hw = 5 + 5 * u01(h, 40)
    hh = 4 + 5 * u01(lattice_hash(gx, gy, seed_key(seed, 41)), 40)
    # The lot must lie between marsh and dunes, off the main road, at the local density.
    lot = Profile(float(hy.min()), float(hy.max()), seed).sampler(hy.astype(np.float32))
    density = 0.25 + 0.6 * noise2(hx, hy, 550, seed_key(seed, 42))
    ok = (
        (gy % 4 != 0)
        & (u01(h, 10) < density)
        & (hx - hw > lot("marsh") + 18)
        & (hx + hw < lot("dune") - 10)
        & (np.abs(hx - lot("road")) > hw + 12)
    )
    pick = (h % np.uint64(len(ROOFS) - 1)).astype(np.int64)
    pick[u01(h, 30) < 0.06] = len(ROOFS) - 1  # a few blue tarps
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
    h = lattice_hash(gx, gy, seed_key(seed, 50))
    bx = ((gx + 0.5) * DEBRIS_CELL + (u01(h, 0) - 0.5) * 6)[idx]
    by = ((gy + 0.5) * DEBRIS_CELL + (u01(h, 20) - 0.5) * 6)[idx]
    radius = (2 + 3.5 * u01(h, 40))[idx] * (1 + 0.5 * fine)
    density = np.clip((field - 0.55) * 2 + (hard - 0.5), 0, 0.6)
    return (u01(h, 10)[idx] < density) & ((x - bx) ** 2 + (y - by) ** 2 < radius**2)
