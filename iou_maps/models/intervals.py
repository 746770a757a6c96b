"""Calibrated intervals for predicted metrics: split conformal prediction, normalized and
Mondrian.

A predicted metric vector comes with **interval inputs** computed by the regressor for each
tile: a ``scale`` per metric (how hard the tile is: wider where the regressor is unsure) and a
``group`` (tiles alike in how the regressor errs, e.g. "a class may have been missed").
A ``Calibration`` turns them into bounds::

    lower = value - q_lo[group, metric] * scale      upper = value + q_hi[group, metric] * scale

with ``q_lo``/``q_hi`` the conformal quantiles of the signed, scaled errors of a calibration
set (tiles whose heads never trained on them), at ``level`` (0.9: the interval holds the true
value 9 times in 10). Bounds are clipped to [0, 1], the metrics' range.

The few lines are written here rather than taken from a library: the quantile rule is one
line, the bounds must be recomputed from stored inputs at serve time (a per-storm calibration
changes ``q`` without recomputing any prediction), and neither crepes nor MAPIE keeps the
inputs and the quantiles apart in a form that small.

The inputs do not depend on the calibration, so they are cached with the prediction; a
calibration's ``id`` keys whatever depends on it (bounds aggregated to lower zooms).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from iou_maps.errors import CalibrationError

#: The level of the intervals unless one is asked for.
DEFAULT_LEVEL = 0.9
#: The fewest calibration tiles (per metric) that give a quantile at the default level:
#: with n tiles the conformal quantile is the ceil((n + 1) * level)-th smallest score, which
#: exists only for n >= level / (1 - level) (9 at 0.9); a few dozen make it stable.
MIN_TILES = 20
#: Scales below this are raised to it (a zero scale would give a zero-width interval).
MIN_SCALE = 1e-3


def check_level(level: float) -> float:
    """``level`` if it is in (0, 1), else CalibrationError."""
    if not (isinstance(level, float | int) and 0.0 < float(level) < 1.0):
        raise CalibrationError(f"an interval level must be in (0, 1), got {level!r}")
    return float(level)


@dataclass(frozen=True)
class IntervalInputs:
    """What a regressor computes per tile for its intervals (independent of calibration)."""

    #: (N, M) float32 in [MIN_SCALE, 1]: the difficulty of each metric on each tile.
    scale: np.ndarray
    #: (N,) uint8: the Mondrian group of each tile (0 … groups-1).
    group: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """Conformal quantiles that make intervals at ``level`` from interval inputs."""

    level: float
    #: (groups, M, 2) float: the multipliers of scale below and above the value.
    quantiles: np.ndarray
    #: Calibration tiles per group and metric (groups, M).
    counts: np.ndarray
    #: Where the calibration tiles came from ("regressor validation scenes", "storm alpha").
    scope: str

    @property
    def n(self) -> int:
        """The number of calibration tiles (of the metric with most)."""
        return int(self.counts.sum(axis=0).max()) if self.counts.size else 0

    @property
    def groups(self) -> int:
        """The number of Mondrian groups."""
        return int(self.quantiles.shape[0])

    def bounds(self, values: np.ndarray, inputs: IntervalInputs) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each (N, M) float32 in [0, 1]; NaN where the value is NaN."""
        values = np.asarray(values, np.float32)
        if values.ndim == 1:
            values = values[None]
        scale = np.maximum(np.asarray(inputs.scale, np.float32).reshape(values.shape), MIN_SCALE)
        group = np.clip(np.asarray(inputs.group, np.int64).reshape(-1), 0, self.groups - 1)
        q = self.quantiles[group]  # (N, M, 2)
        lower = np.clip(values - q[..., 0] * scale, 0.0, 1.0)
        upper = np.clip(values + q[..., 1] * scale, 0.0, 1.0)
        return lower.astype(np.float32), upper.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (the regressor's metadata, a storm's calibration file)."""
        return {
            "level": self.level,
            "quantiles": np.round(self.quantiles, 6).tolist(),
            "counts": self.counts.astype(int).tolist(),
            "scope": self.scope,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """``to_dict``'s inverse; CalibrationError for a malformed record."""
        try:
            q = np.asarray(d["quantiles"], np.float64)
            counts = np.asarray(d["counts"], np.int64)
            out = cls(check_level(d["level"]), q, counts, str(d.get("scope", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"malformed calibration record: {e}") from None
        if q.ndim != 3 or q.shape[2] != 2 or counts.shape != q.shape[:2]:
            raise CalibrationError(f"malformed calibration record: quantiles {q.shape}")
        return out

    @property
    def id(self) -> str:
        """A short hash of the record: part of the cache keys of what depends on it."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile of ``scores`` at ``level``: the ceil((n+1)·level)-th
    smallest (inf when n is too small for that level)."""
    s = np.sort(np.asarray(scores, np.float64)[np.isfinite(scores)])
    k = int(np.ceil((len(s) + 1) * level))
    return float(s[k - 1]) if 1 <= k <= len(s) else float("inf")


def fit_calibration(
    true: np.ndarray,
    pred: np.ndarray,
    inputs: IntervalInputs,
    *,
    level: float = DEFAULT_LEVEL,
    groups: int = 2,
    scope: str = "",
    min_tiles: int = MIN_TILES,
) -> Calibration:
    """The calibration of intervals at ``level`` from calibration tiles (``true`` and
    ``pred``: (N, M) metric vectors, NaN where undefined).

    Each side gets its own quantile at (1 + level) / 2 of the scaled signed errors, so the
    interval may be asymmetric (a missed class makes the truth far below the prediction,
    never far above). A group with fewer than ``min_tiles`` tiles for a metric takes the
    quantiles of all tiles (Mondrian only where there is data for it); CalibrationError when
    there are fewer than ``min_tiles`` tiles in all.
    """
    level = check_level(level)
    true = np.asarray(true, np.float64)
    pred = np.asarray(pred, np.float64)
    scale = np.maximum(np.asarray(inputs.scale, np.float64), MIN_SCALE)
    group = np.asarray(inputs.group, np.int64).reshape(-1)
    nmetrics = true.shape[1]
    ok = np.isfinite(true) & np.isfinite(pred)
    if int(ok.sum(axis=0).max(initial=0)) < min_tiles:
        raise CalibrationError(
            f"{int(ok.sum(axis=0).max(initial=0))} tiles with a true and a predicted value; "
            f"calibrating intervals needs at least {min_tiles}"
        )
    side = (1.0 + level) / 2.0
    q = np.zeros((groups, nmetrics, 2))
    counts = np.zeros((groups, nmetrics), np.int64)
    below = (pred - true) / scale  # > 0 where the truth is below the prediction
    for m in range(nmetrics):
        everywhere = ok[:, m]
        overall = (
            conformal_quantile(below[everywhere, m], side),
            conformal_quantile(-below[everywhere, m], side),
        )
        for g in range(groups):
            sel = everywhere & (group == g)
            counts[g, m] = int(sel.sum())
            if sel.sum() >= min_tiles:
                q[g, m] = (
                    conformal_quantile(below[sel, m], side),
                    conformal_quantile(-below[sel, m], side),
                )
            else:
                q[g, m] = overall
    # A side whose quantile is negative would put the bound past the value: keep the value.
    q = np.where(np.isfinite(q), np.maximum(q, 0.0), 1.0 / MIN_SCALE)
    return Calibration(level, q, counts, scope)


def coverage(
    true: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per metric: the share of tiles whose true value lies in [lower, upper], and the mean
    width (NaN for a metric without a true value anywhere)."""
    true = np.asarray(true, np.float64)
    ok = np.isfinite(true) & np.isfinite(lower) & np.isfinite(upper)
    inside = (true >= lower - 1e-6) & (true <= upper + 1e-6) & ok
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = np.where(n > 0, inside.sum(axis=0) / np.maximum(n, 1), np.nan)
        width = np.where(n > 0, np.where(ok, upper - lower, 0).sum(axis=0) / np.maximum(n, 1),
                         np.nan)  # fmt: skip
    return cov, width
