"""Filling a layer's maps, written once: find what is missing, compute it, store it, then
write the lower-zoom aggregates.

The plan is a list of steps made from the layers (``steps_for``): a computed layer is one
``Compute`` step on the analysis tiles under its area, then one ``Aggregate``; a derived
layer first needs its first input filled, then its other inputs computed where the first has
values, then its own aggregates. Who runs a ``Compute`` step is the ``Runner`` passed in —
in this process (``precompute``), on a Dask cluster (``cluster``), or through the engine's
single flight as tile requests would (``EngineRunner``, used by exports) — as MapProxy's and
tilecloud-chain's seeders run one seeding loop on many executors. One record, ``FillSummary``,
says what any of them did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import shapely
from mercantile import Tile

from iou_maps.compute.aggregate import aggregate_levels, aggregates_complete, uncached, with_values
from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.metric_store import MetricStore
from iou_maps.errors import BadBBox, CacheUnavailable, LayerNotFillable
from iou_maps.layers.base import Layer
from iou_maps.layers.registry import LAYERS, filled_with, get_layer
from iou_maps.layers.sources import LayerStores
from iou_maps.storms.catalog import Storm
from iou_maps.storms.grid import tiles_intersecting

#: Failure messages kept in a summary (the count is always complete).
MAX_FAILURES_KEPT = 100

Progress = Callable[[int, int], None]  # (tiles done now, total) as work advances


@dataclass
class LayerFill:
    """What a fill did for one layer of its plan."""

    tiles: int = 0  # analysis tiles its compute steps looked at
    already_cached: int = 0
    computed: int = 0  # values computed for it (a derived layer's: its inputs')
    aggregated: int = 0  # aggregate cells written


@dataclass
class FillSummary:
    """What filling did: a block of tiles on a worker, a precompute run, an export's fill.
    The counts of the first layer of the plan are the run's (``total``, ``already_cached``,
    ``aggregated``); ``computed`` and the failure counts are of every step; ``layers`` has
    each layer's own."""

    storm: str = ""
    source: str = ""
    model_id: str = ""
    total: int = 0
    already_cached: int = 0
    computed: int = 0
    no_imagery: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    model_calls: int = 0
    aggregated: int = 0
    seconds: float = 0.0
    layers: dict[str, LayerFill] = field(default_factory=dict)

    def add(self, other: FillSummary) -> None:
        """Add ``other``'s computation counts (a block's, to a run's)."""
        self.computed += other.computed
        self.no_imagery += other.no_imagery
        self.failed += other.failed
        self.failures.extend(other.failures[: MAX_FAILURES_KEPT - len(self.failures)])
        self.model_calls += other.model_calls

    def fail(self, tiles: int, message: str) -> None:
        """Count ``tiles`` failed, keeping ``message`` while few are kept."""
        self.failed += tiles
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(message)

    @property
    def all_aggregated(self) -> int:
        """Aggregate cells written for every layer of the plan."""
        return sum(fill.aggregated for fill in self.layers.values())

    @property
    def tiles_per_second(self) -> float:
        """Tiles computed per second of the whole run (aggregates included)."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Compute:
    """Compute what ``layer`` lacks on the analysis tiles under its area (``within``: only
    where that layer has values), for the maps of ``serves``."""

    layer: Layer
    serves: Layer
    within: Layer | None = None


@dataclass(frozen=True)
class Aggregate:
    """Write ``layer``'s lower-zoom aggregates from its analysis tiles' values."""

    layer: Layer


Step = Compute | Aggregate


def steps_for(layer: Layer) -> list[Step]:
    """The steps that make ``layer``'s maps complete."""
    if not layer.derived:
        return [Compute(layer, layer), Aggregate(layer)]
    first = get_layer(layer.inputs[0])
    more: list[Step] = [Compute(get_layer(n), layer, first) for n in layer.inputs[1:]]
    return [*steps_for(first), *more, Aggregate(layer)]


def precompute_steps(layer: Layer) -> list[Step]:
    """What precompute fills for ``layer`` (a computed one): its steps, then those of the
    derived layers filled with it (``registry.filled_with``)."""
    if layer.derived:
        computed = [c for c in LAYERS.values() if not c.derived]
        withs = [
            f"{c.name}: the {', '.join(d.name for d in filled_with(c)[1:])} layer too"
            for c in computed
            if len(filled_with(c)) > 1
        ]
        names = " or ".join(c.name for c in computed)
        raise LayerNotFillable(f"precompute fills {names} values ({'; '.join(withs)})")
    steps: list[Step] = []
    for each in filled_with(layer):
        steps.extend(s for s in steps_for(each) if s not in steps)
    return steps


def tiles_of(
    storm: Storm, zoom: int, bbox: Sequence[float] | None = None, layer: Layer | None = None
) -> list[Tile]:
    """Analysis tiles at ``zoom`` under ``layer``'s area of the storm (default: its
    footprints), and inside ``bbox`` W,S,E,N if given."""
    area = layer.area(storm) if layer is not None else storm.coverage
    if bbox is not None:
        w, s, e, n = bbox
        if not (w < e and s < n):
            raise BadBBox(f"bbox {bbox} must be W,S,E,N with W < E and S < N")
        area = shapely.intersection(area, shapely.box(w, s, e, n))
    return tiles_intersecting(area, zoom)


class Runner(Protocol):
    """Runs a plan's ``Compute`` steps: computes and stores ``layer``'s values of
    ``tiles``, calling ``advance(n)`` as tiles are done; what it did."""

    def compute(
        self, layer: Layer, storm_name: str, tiles: list[Tile], advance: Callable[[int], None]
    ) -> FillSummary:
        """Compute and store the values of ``tiles``."""
        ...


@dataclass
class FillPlan:
    """A plan's steps for one storm, and what they run against."""

    stores: LayerStores
    storm: Storm
    analysis_zoom: int
    lowest_zoom: int
    steps: list[Step]
    bbox: Sequence[float] | None = None
    #: Recompute the first layer's values even where cached.
    refresh: bool = False
    #: Write aggregates only where something was computed or some are missing (exports).
    lazy_aggregates: bool = False

    def run(self, runner: Runner, progress: Progress | None = None) -> FillSummary:
        """Run the steps in order with ``runner``; the summary of the whole run."""
        start = time.perf_counter()
        first = self.steps[0].layer
        summary = FillSummary(storm=self.storm.name, source=first.name,
                              model_id=self._store(first).model_id)  # fmt: skip
        state = _Progress(progress)
        tiles_by: dict[str, list[Tile]] = {}
        for step in self.steps:
            if isinstance(step, Compute):
                fill = summary.layers.setdefault(step.serves.name, LayerFill())
                tiles_by[step.layer.name] = self._compute(step, runner, summary, fill, state,
                                                          tiles_by)  # fmt: skip
            else:
                fill = summary.layers.setdefault(step.layer.name, LayerFill())
                fill.aggregated += self._aggregate(step.layer, tiles_by, summary)
        main = summary.layers[first.name]
        summary.total, summary.already_cached, summary.aggregated = (
            main.tiles, main.already_cached, main.aggregated,
        )  # fmt: skip
        state.finish()
        summary.seconds = time.perf_counter() - start
        return summary

    def _store(self, layer: Layer) -> MetricStore:
        store = self.stores.store(layer)
        if store is None:
            raise CacheUnavailable(f"no cache for {layer.name} values: Redis is not reachable")
        return store

    def _compute(
        self, step: Compute, runner: Runner, summary: FillSummary, fill: LayerFill,
        state: _Progress, tiles_by: dict[str, list[Tile]],
    ) -> list[Tile]:  # fmt: skip
        store = self._store(step.layer)
        name = self.storm.name
        if step.within is None:
            tiles = tiles_of(self.storm, self.analysis_zoom, self.bbox, step.layer)
        else:
            tiles = with_values(self._store(step.within), name, tiles_by[step.within.name])
        first = step is self.steps[0]
        todo, cached = (list(tiles), 0) if self.refresh and first else uncached(store, name, tiles)
        fill.tiles += len(tiles)
        fill.already_cached += cached
        state.grow(len(tiles), cached)
        done = runner.compute(step.layer, name, todo, state.advance)
        summary.add(done)
        fill.computed += done.computed
        return tiles

    def _aggregate(
        self, layer: Layer, tiles_by: dict[str, list[Tile]], summary: FillSummary
    ) -> int:
        base = layer.inputs[0] if layer.derived else layer.name
        tiles = tiles_by[base]
        store = self._store(layer)
        name = self.storm.name
        if (
            self.lazy_aggregates
            and not summary.computed
            and aggregates_complete(store, name, tiles, self.lowest_zoom)
        ):
            return 0
        return aggregate_levels(
            store, name, tiles, self.analysis_zoom, self.lowest_zoom,
            leaves=lambda part: self.stores.leaves(name, part, layer),
        )  # fmt: skip


class _Progress:
    """Tiles done of a total that grows step by step, reported to a ``Progress`` callback."""

    def __init__(self, callback: Progress | None) -> None:
        self.done, self.total, self.callback = 0, 0, callback

    def grow(self, tiles: int, done: int) -> None:
        self.total += tiles
        self.advance(done)

    def advance(self, n: int) -> None:
        self.done += n
        if self.callback:
            self.callback(self.done, self.total)

    def finish(self) -> None:
        self.done = self.total
        if self.callback:
            self.callback(self.done, self.total)


class EngineRunner:
    """Computes through the engine, as tile requests do (its single flight and its
    computers: the models load in a worker process only if something is missing), in
    chunks of ``chunk`` tiles; every value is stored before it returns."""

    def __init__(self, engine: MetricEngine, chunk: int = 256) -> None:
        self.engine, self.chunk = engine, chunk

    def compute(
        self, layer: Layer, storm_name: str, tiles: list[Tile], advance: Callable[[int], None]
    ) -> FillSummary:
        """Compute the values of ``tiles`` through ``engine.analysis_values``."""
        out = FillSummary()
        flight = self.engine.sources.channel(layer).flight
        calls = flight.model_calls
        for i in range(0, len(tiles), self.chunk):
            part = tiles[i : i + self.chunk]
            out.computed += self.engine.analysis_values(storm_name, part, len(part), layer).computed
            advance(len(part))
        self.engine.flush()  # every value is in Redis before the aggregates read it
        out.model_calls = flight.model_calls - calls
        return out
