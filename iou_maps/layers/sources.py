"""An engine's layers at work: a ``Channel`` (computer, cache, single flight) for each layer
a model computes, a store for every layer whose models are there, and the reads that every
layer answers alike (cached entries, the values under an aggregate cell).

Which values a layer has, and which models key them, come from the ``Layer`` objects
(``iou_maps.layers.registry``): nothing here switches on a layer's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import redis
import shapely
from mercantile import Tile

from iou_maps.compute.computed import Computer
from iou_maps.compute.metric_store import NO_IMAGERY, Entry, GuardedStore, MetricStore
from iou_maps.compute.single_flight import SingleFlight
from iou_maps.errors import ModelNotFound, NoLabels
from iou_maps.layers.base import ROLES, Layer
from iou_maps.layers.registry import LAYERS, get_layer
from iou_maps.models.classes import ClassSet
from iou_maps.storms.catalog import Storm
from iou_maps.storms.grid import descendants

#: Most analysis tiles read from the cache to aggregate a far-out cell on the fly.
MAX_ON_THE_FLY = 4096


@dataclass
class Channel:
    """Values of one computed layer: computed by ``computer``, cached in ``store``
    (``cache``: the same, a Redis error meaning "not cached"), each computed once
    (``flight``)."""

    computer: Computer
    store: MetricStore | None
    cache: GuardedStore | None
    flight: SingleFlight

    @classmethod
    def open(
        cls,
        computer: Computer,
        client: redis.Redis | None,
        namespace: str,
        lock_wait: float,
        nmetrics: int,
    ) -> Channel:
        """The channel of ``computer``'s values (``nmetrics`` each) in key space ``namespace``
        of ``client``."""
        store = (
            MetricStore(client, computer.model_id, namespace, nmetrics)
            if client is not None
            else None
        )
        cache = GuardedStore(store) if store is not None else None
        return cls(computer, store, cache, SingleFlight(computer, cache, lock_wait))


class LayerStores:
    """The Redis store of each layer whose models are known (``ids``: role → model id), whose
    values are metric vectors of ``classes`` (the models' class set); what precompute's client
    and the cluster's workers share without loading a model."""

    def __init__(
        self, client: redis.Redis | None, ids: Mapping[str, str], classes: ClassSet
    ) -> None:
        self.ids = dict(ids)
        self.classes = classes
        self.stores: dict[str, MetricStore] = {}
        if client is not None:
            for layer in LAYERS.values():
                if layer.has_models(ids):
                    self.stores[layer.name] = MetricStore(
                        client, layer.model_id(ids), layer.key_space, classes.nmetrics
                    )

    def store(self, layer: Layer) -> MetricStore | None:
        """The store of ``layer``'s values (None without Redis or its models)."""
        return self.stores.get(layer.name)

    def cached(self, storm_name: str, tiles: Sequence[Tile], layer: Layer) -> dict[Tile, Entry]:
        """Stored entries of ``tiles`` in ``layer``'s store (nothing without one)."""
        store = self.store(layer)
        return store.get_many(storm_name, tiles) if store is not None else {}

    def leaves(self, storm_name: str, tiles: Sequence[Tile], layer: Layer) -> dict[Tile, Entry]:
        """The values of analysis ``tiles`` as ``layer``'s aggregates average them: its
        stored values, or for a derived layer its inputs' combined (``combine_leaf``) where
        they are all cached ("no value" where the first has none)."""
        if not layer.derived:
            return self.cached(storm_name, tiles, layer)
        return combine_cached(layer, lambda name, ts: self.cached(storm_name, ts, LAYERS[name]),
                              tiles, leaf=True)  # fmt: skip


class Sources(LayerStores):
    """The layers of an engine: a channel for each computed layer whose model is there
    (``computers``: role → computer), stores for all layers whose models are there;
    ``missing``: role → why its model is not there; ``classes``: the models' class set."""

    def __init__(
        self,
        computers: Mapping[str, Computer],
        client: redis.Redis | None,
        lock_wait: float,
        missing: Mapping[str, str] | None = None,
        *,
        classes: ClassSet,
    ) -> None:
        super().__init__(client, {role: c.model_id for role, c in computers.items()}, classes)
        self.missing = dict(missing or {})
        self.channels: dict[str, Channel] = {}
        for layer in LAYERS.values():
            if layer.computed_by is not None and layer.computed_by in computers:
                channel = Channel.open(
                    computers[layer.computed_by], client, layer.key_space, lock_wait,
                    classes.nmetrics,
                )  # fmt: skip
                self.channels[layer.name] = channel
                if channel.store is not None:
                    self.stores[layer.name] = channel.store  # one store per key space

    def model_id(self, layer: Layer) -> str:
        """The id of the model(s) behind ``layer``'s values (those there: the regressor's
        alone when the others are missing)."""
        return layer.model_id({r: i for r, i in self.ids.items() if r in layer.roles})

    def source_id(self, source: str) -> str:
        """``model_id`` of the layer named ``source``."""
        return self.model_id(get_layer(source))

    @property
    def all_ids(self) -> str:
        """Every model's id, "-" for one that is missing (what any layer may depend on)."""
        return "+".join(self.ids.get(role, "-") for role in ROLES)

    def check(self, storm: Storm, layer: Layer) -> None:
        """NoLabels for a layer that needs labels on a storm without them, ModelNotFound
        without a model the layer needs."""
        if layer.needs_labels and not storm.has_labels:
            raise NoLabels(
                f"storm {storm.name!r} has no label rasters: {layer.name} metrics need labels "
                "(ingest them as <image>_label.tif or .png beside each image)"
            )
        for role in layer.roles:
            if role not in self.ids:
                why = self.missing.get(role, f"this engine has no {role} model")
                raise ModelNotFound(f"{layer.name} metrics are unavailable: {why}")

    def channel(self, layer: Layer) -> Channel:
        """The channel of a computed layer (ModelNotFound without its model)."""
        if layer.derived:
            raise ValueError(f"{layer.name} values are derived from other layers' channels")
        found = self.channels.get(layer.name)
        if found is None:
            why = self.missing.get(str(layer.computed_by), f"no {layer.computed_by} model")
            raise ModelNotFound(f"{layer.name} metrics are unavailable: {why}")
        return found

    def far_cells(
        self,
        storm: Storm,
        cells: list[Tile],
        layer: Layer,
        analysis_zoom: int,
        inside: Callable[[Sequence[Tile], shapely.Geometry], np.ndarray],
    ) -> tuple[dict[Tile, Entry], int]:
        """Cells of a far-out metric tile: pre-aggregated ones (written by precompute), the
        rest averaged from cached analysis tiles when few enough; and how many cells are not
        (wholly) known. ``inside(tiles, area)``: which tiles meet ``area``."""
        storm_name, area = storm.name, layer.area(storm)
        wanted = [c for c, ok in zip(cells, inside(cells, area), strict=True) if ok]
        entries = self.cached(storm_name, wanted, layer)
        absent = [c for c in wanted if c not in entries]
        per_cell = 4 ** (analysis_zoom - cells[0].z)
        if not absent or len(absent) * per_cell > MAX_ON_THE_FLY:
            return entries, len(absent)
        missing = 0
        kids = {c: descendants(c, analysis_zoom) for c in absent}
        # Children outside the coverage are never stored: they have no imagery, not "missing".
        every = [k for ks in kids.values() for k in ks]
        inside_kids = {k for k, ok in zip(every, inside(every, area), strict=True) if ok}
        kids = {c: [k for k in ks if k in inside_kids] for c, ks in kids.items()}
        cached = self.leaves(storm_name, [k for ks in kids.values() for k in ks], layer)
        for c, ks in kids.items():
            vals = [v for k in ks if k in cached and (v := cached[k].values) is not None]
            if vals:
                entries[c] = Entry(nan_mean(np.stack(vals)), len(vals))
            if any(k not in cached for k in ks):
                missing += 1  # partly known at best
        return entries, missing

    def close(self) -> None:
        """Store what was computed, then stop the computers."""
        for channel in self.channels.values():
            channel.flight.close()  # values already computed still reach Redis
        for channel in self.channels.values():
            channel.computer.close()

    def flush(self) -> None:
        """Wait until every computed value is stored (or has failed)."""
        for channel in self.channels.values():
            channel.flight.flush()


def nan_mean(stack: np.ndarray) -> np.ndarray:
    """Mean over the first axis where defined, NaN where no value is (a class absent from
    every tile has no IoU): np.nanmean's sum / count, without its warning (and without
    ``warnings.catch_warnings``, which is not thread-safe in the service)."""
    known = ~np.isnan(stack)
    with np.errstate(invalid="ignore"):
        return (np.where(known, stack, 0).sum(axis=0) / known.sum(axis=0)).astype(np.float32)


def combine_cached(
    layer: Layer,
    read: Callable[[str, Sequence[Tile]], dict[Tile, Entry]],
    tiles: Sequence[Tile],
    *,
    leaf: bool,
) -> dict[Tile, Entry]:
    """A derived layer's entries of ``tiles`` from its inputs' entries (``read(name,
    tiles)``): "no value" where the first input has none, the combination where every input
    has a value; left out where an input is not known yet."""
    combine = layer.combine_leaf if leaf else layer.combine
    assert combine is not None
    first = read(layer.inputs[0], tiles)
    want = [t for t, e in first.items() if e.has_imagery]
    others = [read(name, want) for name in layer.inputs[1:]]
    out = {t: NO_IMAGERY for t, e in first.items() if not e.has_imagery}
    for t in want:
        got = [o.get(t) for o in others]
        if any(g is None for g in got):
            continue
        if all(g is not None and g.has_imagery for g in got):
            # Two inputs today (``Combine``); a longer chain folds left.
            entry = first[t]
            for g in got:
                assert g is not None
                entry = combine(entry, g)
            out[t] = entry
        else:
            out[t] = NO_IMAGERY
    return out


class NoCache:
    """The cache of an engine without Redis: nothing cached."""

    @staticmethod
    def get_many(storm_name: str, tiles: Sequence[Tile]) -> dict[Tile, Entry]:
        """Nothing is cached."""
        return {}


__all__ = ["Channel", "LayerStores", "NoCache", "Sources", "combine_cached", "nan_mean"]
