"""Flights over the synthetic island: the frame plan, and each frame rendered.

Frames are shot along 1-3 north-south flight lines, each rotated by the flight's crab angle; a
frame is rendered in camera geometry (NOAA-style JPEGs with corner coordinates) or resampled
onto a north-up grid shared by all scenes (GeoTIFFs, JPEGs with world files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from rasterio.transform import Affine

from iou_maps.models.classes import NODATA_LABEL
from iou_maps.storms.synthetic.noise import Array
from iou_maps.storms.synthetic.world import ORIGIN_X, ORIGIN_Y, Look, Profile, render_world


@dataclass(frozen=True)
class Frame:
    """One exposure: its flight and place in it, centre, heading, time and imaging look."""

    flight: str
    line: int
    index: int  # 1-based within the flight
    cx: float  # frame centre, UTM
    cy: float
    heading: float  # degrees clockwise from north of the image's up direction
    when: datetime
    pnum: int
    look: Look


def plan_frames(seed: int, scenes: int, size: int, gsd: float) -> list[Frame]:
    """Frames along 1-3 north-south lines over the island, alternating flight directions."""
    rng = np.random.default_rng([seed, 7])
    lines = 1 if scenes <= 3 else 2 if scenes <= 8 else 3
    per_line = [scenes // lines + (1 if i < scenes % lines else 0) for i in range(lines)]
    extent = size * gsd
    day = datetime(2019, 9, 7, tzinfo=UTC) + timedelta(days=int(rng.integers(0, 3)))
    # Start somewhere between Salvo and Rodanthe, leaving room northward.
    y_start = float(rng.uniform(800, 5500))
    mid_y = y_start + 0.5 * max(per_line) * extent * 0.7
    prof = Profile(mid_y - 1, mid_y + 1, seed).sampler(np.array([mid_y], np.float32))
    island_x = float((prof("ocean")[0] + prof("sound")[0]) / 2)
    side_overlap = float(rng.uniform(0.28, 0.38))
    spacing = extent * (1 - side_overlap)
    pbase = 20_000_000 + int(rng.integers(0, 6_000_000))
    frames: list[Frame] = []
    for line, count in enumerate(per_line):
        name = f"{day:%Y%m%d}{chr(ord('a') + line)}_RGB"
        crab = float(rng.uniform(2.0, 6.0) * rng.choice([-1.0, 1.0]))
        northbound = line % 2 == 0
        overlap = float(rng.uniform(0.25, 0.4))
        step = extent * (1 - overlap)
        start = day + timedelta(hours=13, minutes=int(30 + 95 * line + rng.integers(0, 20)))
        interval = max(1, round(step / 62.0))  # ~62 m/s ground speed between exposures
        look = Look(
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
                Frame(
                    flight=name, line=line, index=i + 1, cx=cx, cy=cy, heading=heading,
                    when=start + timedelta(seconds=i * interval),
                    pnum=pbase + line * 100_000 + i * 3, look=look,
                )
            )  # fmt: skip
    return frames


def _axes(frame: Frame) -> tuple[float, float, float, float]:
    """Unit vectors (east, north) of the image's column (right) and row (down) directions."""
    t = math.radians(frame.heading)
    fx, fy = math.sin(t), math.cos(t)  # forward = image up
    return math.cos(t), -math.sin(t), -fx, -fy


def frame_corners(frame: Frame, size: int, gsd: float) -> list[tuple[float, float]]:
    """UTM outer corners ul, ur, lr, ll (pixel edges (0,0), (0,W), (H,W), (H,0))."""
    rx, ry, dx, dy = _axes(frame)
    half = size * gsd / 2
    out = []
    for r, c in ((0, 0), (0, size), (size, size), (size, 0)):
        u = c * gsd - half
        v = r * gsd - half
        out.append((frame.cx + u * rx + v * dx, frame.cy + u * ry + v * dy))
    return out


def render_camera(frame: Frame, size: int, gsd: float, seed: int) -> tuple[Array, Array]:
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


def render_northup(frame: Frame, size: int, gsd: float, seed: int) -> tuple[Array, Array, Affine]:
    """The frame resampled on a north-up grid snapped to global multiples of ``gsd``.

    Returns (rgb [H, W, 3] with 0 outside the frame, label [H, W] with 255 outside, transform).
    Snapping makes all scenes share one pixel lattice, so overlaps compare pixel for pixel.
    """
    corners = frame_corners(frame, size, gsd)
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
