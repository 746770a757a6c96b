"""Deterministic noise of world coordinates: lattice hashes, value noise and smooth fields.

Everything is vectorised numpy; noise is value noise gathered from small hashed lattice tables,
so the same point and seed give the same value in every scene.
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_PX = np.uint64(0x9E3779B97F4A7C15)
_PY = np.uint64(0xC2B2AE3D27D4EB4F)


def seed_key(seed: int, salt: int) -> np.uint64:
    """The hash key of one noise field (``salt``) of a storm's seed."""
    return np.uint64((seed * 0x100000001B3 + salt * 0x9E3779B1 + 0x5BD1E995) % 2**64)


def lattice_hash(ix: Array, iy: Array, key: np.uint64) -> Array:
    """splitmix64-style avalanche of integer lattice coordinates (uint64 arithmetic wraps)."""
    h = (ix.astype(np.uint64) * _PX) ^ (iy.astype(np.uint64) * _PY) ^ key
    h ^= h >> np.uint64(31)
    h *= _M1
    h ^= h >> np.uint64(29)
    h *= _M2
    h ^= h >> np.uint64(32)
    return h


def u01(h: Array, shift: int = 40) -> Array:
    """24 bits of a hash as float32 in [0, 1); other shifts give independent-ish values."""
    return ((h >> np.uint64(shift)) & np.uint64(0xFFFFFF)).astype(np.float32) * np.float32(2**-24)


def _smooth(t: Array) -> Array:
    return t * t * (3 - 2 * t)


def noise2(x: Array, y: Array, scale: float, key: np.uint64) -> Array:
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
    table = u01(lattice_hash(gx[None, :], gy[:, None], key)).ravel()
    i = (iy - y0) * nx + (ix - x0)
    v00, v10 = table[i], table[i + 1]
    v01, v11 = table[i + nx], table[i + nx + 1]
    top = v00 + (v10 - v00) * tx
    bottom = v01 + (v11 - v01) * tx
    return top + (bottom - top) * ty


def fbm2(x: Array, y: Array, scale: float, key: np.uint64, octaves: int = 2) -> Array:
    """Fractal value noise, rescaled so that it spreads over roughly [0, 1]."""
    total = np.zeros(x.shape, np.float32)
    weight = 0.0
    for o in range(octaves):
        w = 0.5**o
        total += np.float32(w) * noise2(x, y, scale * 0.5**o, key + np.uint64(o * 7919))
        weight += w
    total *= np.float32(1 / weight)
    # Summed octaves crowd around 0.5: stretch so thresholds behave alike for any octave count.
    stretch = 1.0 + 0.45 * (octaves - 1)
    return np.clip((total - 0.5) * np.float32(stretch) + 0.5, 0, 1)


def noise1(y: Array, scale: float, key: np.uint64) -> Array:
    """1-D value noise in [-1, 1] (float64, used on the small along-island profile grid)."""
    fy = y / scale
    iy = np.floor(fy)
    t = fy - iy
    t = t * t * (3 - 2 * t)
    iy = iy.astype(np.int64)
    a = u01(lattice_hash(iy, np.zeros_like(iy), key)).astype(np.float64)
    b = u01(lattice_hash(iy + 1, np.zeros_like(iy), key)).astype(np.float64)
    return 2 * (a + (b - a) * t) - 1


#: Smooth 2-D fields (name: scale m, octaves, salt). They are evaluated on a global lattice and
#: interpolated, which is far cheaper per pixel than evaluating each octave of each field.
_FIELDS: dict[str, tuple[float, int, int]] = {
    "coves": (260, 2, 1), "creeks": (60, 2, 2), "ponds": (28, 2, 3), "beach_edge": (22, 1, 4),
    "dune_sand": (14, 2, 5), "lobes": (70, 2, 6), "kind": (45, 2, 23), "damp": (40, 2, 24),
    "turbid": (320, 2, 25), "wave": (40, 1, 26), "glint": (280, 2, 27), "cover": (12, 1, 28),
    "hard": (500, 2, 30), "haze": (380, 2, 31), "cloud": (160, 3, 32), "debris": (240, 2, 51),
}  # fmt: skip


class Lattice:
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
        table = fbm2(self.gx, self.gy, scale, seed_key(seed, salt), octaves)
        i, tx, ty = (self.i, self.tx, self.ty) if m is None else (self.i[m], self.tx[m], self.ty[m])
        v00, v10 = table[i], table[i + 1]
        v01, v11 = table[i + self.nx], table[i + self.nx + 1]
        top = v00 + (v10 - v00) * tx
        return top + (v01 + (v11 - v01) * tx - top) * ty
