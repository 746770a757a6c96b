"""Lower-zoom aggregates of a layer, and the cache look-ups a fill needs (what is missing,
what has a value), in chunks of one Redis round trip each."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mercantile
import numpy as np
from mercantile import Tile

from iou_maps.compute.metric_store import NO_IMAGERY, Entry, MetricStore

#: Cache reads go in chunks of this many tiles (one round trip each).
LOOKUP_CHUNK = 4096


def uncached(store: MetricStore, storm_name: str, tiles: Sequence[Tile]) -> tuple[list[Tile], int]:
    """(tiles not cached for the store's model, how many are), in chunks of round trips."""
    todo: list[Tile] = []
    cached = 0
    for i in range(0, len(tiles), LOOKUP_CHUNK):
        chunk = tiles[i : i + LOOKUP_CHUNK]
        got = store.get_many(storm_name, chunk)
        cached += len(got)
        todo.extend(t for t in chunk if t not in got)
    return todo, cached


def with_values(store: MetricStore, storm_name: str, tiles: Sequence[Tile]) -> list[Tile]:
    """The tiles that have a value (not the "no value" marker) in ``store``."""
    out: list[Tile] = []
    for i in range(0, len(tiles), LOOKUP_CHUNK):
        got = store.get_many(storm_name, tiles[i : i + LOOKUP_CHUNK])
        out.extend(t for t, e in got.items() if e.has_imagery)
    return out


def aggregates_complete(
    store: MetricStore, storm_name: str, tiles: Sequence[Tile], lowest_zoom: int
) -> bool:
    """Whether every aggregate cell ``aggregate_levels`` writes for ``tiles`` is cached."""
    level = set(tiles)
    while level and next(iter(level)).z > lowest_zoom:
        level = {mercantile.parent(t) for t in level}
        cells = sorted(level)
        for i in range(0, len(cells), LOOKUP_CHUNK):
            part = cells[i : i + LOOKUP_CHUNK]
            if len(store.get_many(storm_name, part)) < len(part):
                return False
    return True


def aggregate_levels(
    store: MetricStore,
    storm_name: str,
    tiles: Sequence[Tile],
    analysis_zoom: int,
    lowest_zoom: int,
    leaves: Callable[[list[Tile]], dict[Tile, Entry]] | None = None,
) -> int:
    """Write, for every ancestor of ``tiles`` from ``analysis_zoom`` - 1 down to
    ``lowest_zoom``, the mean of the analysis tiles' values under it with the number of those
    that have values; ``leaves`` reads the analysis tiles' values (default: from ``store``; a
    derived layer's: its inputs' combined, ``LayerStores.leaves``).

    Each metric is averaged over the tiles where it is defined (a class absent from a tile
    does not pull its IoU towards 0), and over the analysis tiles themselves at every level:
    means of means would weigh a class by the tiles that have any value, not by those that
    have it. Parents whose children have no imagery get the "no imagery" marker, so every cell
    of every metric tile down to ``lowest_zoom`` is then answered from the cache.
    """
    tiles = sorted(set(tiles))
    read = leaves if leaves is not None else (lambda part: store.get_many(storm_name, part))
    entries: dict[Tile, Entry] = {}
    for i in range(0, len(tiles), LOOKUP_CHUNK):
        entries.update(read(tiles[i : i + LOOKUP_CHUNK]))
    known = [t for t in tiles if t in entries and entries[t].has_imagery]
    values = np.array([entries[t].values for t in known], np.float64).reshape(len(known), -1)
    defined = ~np.isnan(values)
    summed = np.where(defined, values, 0.0)
    every = np.array([(t.x, t.y) for t in tiles], np.int64).reshape(-1, 2)
    valued = np.array([(t.x, t.y) for t in known], np.int64).reshape(-1, 2)
    written = 0
    for z in range(analysis_zoom - 1, lowest_zoom - 1, -1):
        shift = analysis_zoom - z
        parents = np.unique(every >> shift, axis=0)
        # Which parent each analysis tile with values falls in (parents are sorted rows).
        at = np.searchsorted(
            parents[:, 0] * (1 << z) + parents[:, 1],
            (valued[:, 0] >> shift) * (1 << z) + (valued[:, 1] >> shift),
        )
        sums = np.zeros((len(parents), values.shape[1]))
        counts = np.zeros((len(parents), values.shape[1]))
        tiles_with_values = np.zeros(len(parents), np.int64)
        np.add.at(sums, at, summed)
        np.add.at(counts, at, defined)
        np.add.at(tiles_with_values, at, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (sums / counts).astype(np.float32)
        out: dict[Tile, Entry] = {
            Tile(int(px), int(py), z): (
                Entry(means[i], int(tiles_with_values[i])) if tiles_with_values[i] else NO_IMAGERY
            )
            for i, (px, py) in enumerate(parents)
        }
        keys = list(out)
        for i in range(0, len(keys), LOOKUP_CHUNK):
            store.set_many(storm_name, {p: out[p] for p in keys[i : i + LOOKUP_CHUNK]})
        written += len(parents)
    return written
