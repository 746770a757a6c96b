"""Rendering options: the value range a metric layer's colours span, and the contrast stretch
and colour formula of the RGB imagery."""

import math
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Query
from pydantic import BeforeValidator, StringConstraints
from rio_tiler.models import ImageData
from titiler.core.dependencies import DefaultDependency

from service.params.base import bad_param, inline


def parse_rescale(ranges: list[str] | None, max_ranges: int) -> list[tuple[float, float]] | None:
    """'min,max' strings (their form checked by ``RangeItem``) as finite ranges."""
    if not ranges:
        return None
    if len(ranges) not in {1, max_ranges}:
        counts = "one range" if max_ranges == 1 else f"one range, or one per band ({max_ranges})"
        raise bad_param("rescale", f"give {counts}, not {len(ranges)}")
    out = []
    for r in ranges:
        lo, hi = (float(v) for v in r.split(","))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise bad_param("rescale", f"{r!r} is not finite")
        if not lo < hi:
            raise bad_param("rescale", f"min {lo} is not below max {hi}")
        out.append((lo, hi))
    return out


_FLOAT = r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
#: One 'min,max' range of plain decimal numbers (titiler also took '[0,1]', 'nan' and 'inf';
#: the schema states the form, so generated and hand-written requests get it right).
RangeItem = Annotated[str, StringConstraints(pattern=f"^{_FLOAT},{_FLOAT}$")]

RescaleQuery = Annotated[
    list[RangeItem] | None,
    Query(
        title="Colour scale range",
        description="'min,max' of the values the colours span.",
        examples=["0,1", "0.5,1"],
    ),
]


@dataclass
class MetricRenderingParams(DefaultDependency):
    """How a metric layer is coloured: the value range the colormap spans.

    titiler's ``ImageRenderingParams`` also takes ``color_formula`` and ``return_mask``, which
    mean nothing for metric tiles: accepting and ignoring them would mislead, and each
    parameter costs every tile request its validation.
    """

    rescale: RescaleQuery = None

    def __post_init__(self) -> None:
        self.rescale = parse_rescale(self.rescale, max_ranges=1)  # type: ignore[assignment]


#: The metric layers' rendering options (``rescale``).
RenderParams = inline(MetricRenderingParams)


def validate_color_formula(formula: str | None) -> str | None:
    """A rio-color formula that applies to RGB imagery, tried on one pixel.

    Parsing alone (titiler's check) lets through formulas that fail when applied (a gamma of
    0, band 4 of an RGB image, ...): a 500 on every tile.
    """
    if formula is None:
        return None
    try:
        ImageData(np.ma.MaskedArray(np.full((3, 1, 1), 128, np.uint8))).apply_color_formula(formula)
    except Exception as exc:
        raise ValueError(f"invalid color formula: {exc}") from None
    return formula


@dataclass
class ImageryRenderingParams(DefaultDependency):
    """Display options of the RGB imagery: contrast stretch and colour formula.

    Colormaps apply to one band, not to RGB imagery: none are offered here.
    """

    rescale: Annotated[
        list[RangeItem] | None,
        Query(
            title="Contrast stretch",
            description=(
                "'min,max' of the 0..255 pixel values the output spans: one range for all "
                "bands, or three (red, green, blue)."
            ),
            examples=["20,220"],
        ),
    ] = None
    color_formula: Annotated[
        str | None,
        BeforeValidator(validate_color_formula),
        Query(
            title="Color formula",
            description="rio-color formula, e.g. 'gamma rgb 1.3, sigmoidal rgb 10 0.3'.",
        ),
    ] = None
    add_mask: Annotated[
        bool | None,
        Query(alias="return_mask", description="Transparent where no scene has data (default)."),
    ] = None

    def __post_init__(self) -> None:
        self.rescale = parse_rescale(self.rescale, max_ranges=3)  # type: ignore[assignment]
