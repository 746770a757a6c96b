"""Colormaps: rio-tiler's, loaded once per process, and the ``colormap_name``/``colormap``
parameters of the metric layers (titiler's, with custom colormaps checked)."""

import json
import math
from typing import Annotated, Any, Literal

from fastapi import Query
from rio_tiler.colormap import ColorMaps, parse_color
from rio_tiler.colormap import cmap as default_cmap
from rio_tiler.types import ColorMapType

from service.params.base import bad_param, inline

#: Largest colormap legend image edge (px).
MAX_LEGEND_SIZE = 2048


class CachedColorMaps(ColorMaps):
    """rio-tiler's colormaps, each loaded from its .npy file once per process, not per tile."""

    def get(self, name: str) -> ColorMapType:
        """The colormap ``name``, loaded once per process."""
        cache: dict[str, ColorMapType] = self.__dict__.setdefault("_loaded", {})
        if name not in cache:
            cache[name] = super().get(name)
        return cache[name]


cached_cmap = CachedColorMaps(data=default_cmap.data)


def parse_colormap(text: str) -> ColorMapType:
    """A custom colormap from JSON: ``{"0": "#ff0000", "255": [0, 0, 255, 255]}`` (index →
    colour) or ``[[[min, max], colour], ...]`` (intervals); 422 naming ``colormap`` otherwise.

    titiler's parser lets bad keys, colours and shapes through to the renderer (a 500).
    """
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise bad_param("colormap", f"not valid JSON ({exc})") from None
    try:
        if isinstance(value, dict) and value:
            cmap: dict[int, tuple[int, int, int, int]] = {}
            for key, color in value.items():
                index = int(key)
                if not 0 <= index <= 255:
                    raise ValueError(f"index {key!r} outside 0..255")
                cmap[index] = _color(color)
            return cmap
        if isinstance(value, list) and value:
            intervals = []
            for (lo, hi), color in value:
                lo, hi = float(lo), float(hi)
                if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                    raise ValueError(f"interval [{lo}, {hi}] is not a finite min < max")
                intervals.append(((lo, hi), _color(color)))
            return intervals
    except (ValueError, TypeError, KeyError) as exc:
        raise bad_param("colormap", str(exc)) from None
    raise bad_param(
        "colormap", "give a non-empty JSON object {index: colour} or list [[[min, max], colour]]"
    )


def _color(value: Any) -> tuple[int, int, int, int]:
    """An RGBA colour from '#rrggbb[aa]' or [r, g, b(, a)] with 0..255 integers."""
    if isinstance(value, list) and not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value
    ):
        raise ValueError(f"colour {value!r}: use integers 0..255")
    if not isinstance(value, str | list):
        raise ValueError(f"colour {value!r}: use '#rrggbb' or [r, g, b, a]")
    try:
        return parse_color(value)
    except Exception as exc:  # rio-tiler's InvalidColorFormat and friends
        raise ValueError(f"colour {value!r}: {exc}") from None


def colormap_params(
    colormap_name: Annotated[
        Literal[tuple(cached_cmap.list())],  # type: ignore[valid-type]
        Query(description="Colormap name (see /colorMaps)."),
    ] = None,
    colormap: Annotated[
        str | None,
        Query(
            description=(
                'JSON custom colormap: {"index": colour} over the 0..255 scale, or '
                "[[[min, max], colour], ...] intervals; colours '#rrggbb[aa]' or [r, g, b, a]."
            ),
        ),
    ] = None,
) -> ColorMapType | None:
    """The colormap asked for by name or as JSON (None: the layer's default)."""
    if colormap_name:
        return cached_cmap.get(colormap_name)
    if colormap:
        return parse_colormap(colormap)
    return None


#: ``colormap_name`` (checked against the list) or a ``colormap`` JSON, on the event loop.
ColorMapParams = inline(colormap_params)


async def LegendSizeParams(
    height: Annotated[
        int | None, Query(ge=1, le=MAX_LEGEND_SIZE, description="Image height in pixels.")
    ] = None,
    width: Annotated[
        int | None, Query(ge=1, le=MAX_LEGEND_SIZE, description="Image width in pixels.")
    ] = None,
) -> None:
    """Bounds the colormap legend size (a negative one was a 500, a huge one a memory hazard)."""
