"""A layer of metric maps: one object says what its values are, where they are cached, which
models stand behind them, how they are computed, aggregated and drawn.

Two kinds, as in Martin every source is one object of a small set of kinds:

- a **computed** layer has a model of its own (a ``Computer`` under its ``role``): the
  engine reads its cache and computes what is missing once (single flight);
- a **derived** layer combines the values of other layers (``inputs``, in order: the first
  decides where it has values), analysis tile by analysis tile; only its lower-zoom
  aggregates are stored, in a key space of its own.

Endpoints, the point lookup, the summary, precompute, exports and the CLI work through this
interface and the registry (``iou_maps.layers.registry``); none of them switch on a name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import shapely

from iou_maps.compute.metric_store import Entry
from iou_maps.storms.catalog import Storm

#: Model roles: the metric regressor, and the segmentation model scored against labels.
REGRESSOR = "regressor"
SEGMENTATION = "segmentation"
ROLES = (REGRESSOR, SEGMENTATION)

#: Combines a derived layer's inputs at one analysis tile (both have values there).
Combine = Callable[[Entry, Entry], Entry]


@dataclass(frozen=True)
class Layer:
    """One kind of metric map (``predicted``, ``true``, ``error``, …)."""

    #: The name in URLs (``?source=``), the CLI (``--source``) and exports.
    name: str
    #: The words that start its TileJSON description ("Predicted", "True", …).
    title: str
    #: What a value of the layer is, in a sentence (TileJSON, STAC, the docs).
    description: str
    #: What a cell at a lower zoom shows.
    aggregate: str
    #: Redis key space of its values (analysis tiles and aggregates).
    key_space: str
    #: The model roles whose ids key its values (in this order).
    roles: tuple[str, ...]
    #: Its default colormap (rio-tiler name) and the value range the colours span.
    colormap: str = "rdylgn"
    rescale: tuple[float, float] = (0.0, 1.0)
    #: What the colours mean, low to high (legends).
    legend: str = "bad → good"
    #: Whether it has values only where the storm has labels.
    needs_labels: bool = False
    #: A computed layer: the role of the model that computes it (one of ``roles``).
    computed_by: str | None = None
    #: A derived layer: the layers it combines, in order (the first decides where), and how
    #: at an analysis tile (``combine``) and for the lower-zoom aggregates (``combine_leaf``).
    inputs: tuple[str, ...] = ()
    combine: Combine | None = field(default=None, compare=False)
    combine_leaf: Combine | None = field(default=None, compare=False)
    #: What one of its computed values is called in a fill summary ("predictions", …).
    noun: str = "values"
    #: The default layer: its maps keep the plain name ("alpha miou", not "alpha miou x").
    primary: bool = False

    def __post_init__(self) -> None:
        if (self.computed_by is None) == (not self.inputs):
            raise ValueError(f"layer {self.name!r}: either computed by a model or derived")
        if self.inputs and (self.combine is None or self.combine_leaf is None):
            raise ValueError(f"derived layer {self.name!r} needs combine and combine_leaf")

    @property
    def derived(self) -> bool:
        """Whether its values combine other layers' (nothing computes it directly)."""
        return bool(self.inputs)

    def map_name(self, storm_name: str, metric: str) -> str:
        """The name of its map of ``metric`` ("alpha miou", "alpha miou true")."""
        suffix = "" if self.primary else f" {self.name}"
        return f"{storm_name} {metric}{suffix}"

    def model_id(self, ids: Mapping[str, str]) -> str:
        """The id of the model(s) behind its values (part of every cache key): the ids of
        its ``roles`` in ``ids`` (role → model id), joined by ``+``."""
        return "+".join(ids[role] for role in self.roles)

    def has_models(self, ids: Mapping[str, str]) -> bool:
        """Whether ``ids`` has every model its values need."""
        return all(role in ids for role in self.roles)

    def area(self, storm: Storm) -> shapely.Geometry:
        """Where it may have values: under the storm's scenes, or its labelled scenes."""
        return storm.label_coverage if self.needs_labels else storm.coverage
