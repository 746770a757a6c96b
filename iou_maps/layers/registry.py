"""Every layer, in one place: the service, the point lookup, the summary, precompute,
exports and the CLI take the list from here.

Adding a layer: a module defining its ``Layer`` (see ``iou_maps/layers/error.py``), a member
of ``Source`` and an entry of ``LAYERS`` here.
"""

from __future__ import annotations

from enum import StrEnum

from iou_maps.errors import UnknownLayer
from iou_maps.layers.base import Layer
from iou_maps.layers.error import ERROR
from iou_maps.layers.predicted import PREDICTED
from iou_maps.layers.true import TRUE


class Source(StrEnum):
    """The name of a layer (``?source=``, ``--source``): where its values come from."""

    #: The metric regressor's prediction from the imagery alone (every analysis tile).
    predicted = "predicted"
    #: The segmentation model scored against the storm's label rasters (labelled tiles only):
    #: what ``evaluate`` computes.
    true = "true"
    #: predicted − true where both exist; aggregated to lower zooms as the mean absolute error.
    error = "error"


#: The layers by name, in the order menus list them.
LAYERS: dict[str, Layer] = {layer.name: layer for layer in (PREDICTED, TRUE, ERROR)}


def get_layer(name: str | Source) -> Layer:
    """The layer called ``name``; UnknownLayer naming the valid ones otherwise."""
    try:
        return LAYERS[str(name)]
    except KeyError:
        raise UnknownLayer(f"unknown source {name!r}; valid: {', '.join(LAYERS)}") from None


def computed_layers() -> list[Layer]:
    """The layers a model computes directly (each has a channel in an engine)."""
    return [layer for layer in LAYERS.values() if not layer.derived]


def filled_with(layer: Layer) -> list[Layer]:
    """``layer`` and the derived layers filled along with it: those whose first input it is
    (their values exist where its values do)."""
    return [layer] + [d for d in LAYERS.values() if d.inputs and d.inputs[0] == layer.name]


assert set(LAYERS) == {s.value for s in Source}, "every layer has its Source member"
