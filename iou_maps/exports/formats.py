"""The export formats, by name: the one registry the CLI, the library and STAC read.

A new format is a module implementing ``ExportFormat`` and its line in ``FORMATS`` here.
"""

from __future__ import annotations

from pathlib import Path

from iou_maps.compute.engine import MetricEngine
from iou_maps.errors import UnknownExportFormat
from iou_maps.exports.cog import COG
from iou_maps.exports.format import ExportFormat
from iou_maps.exports.maps import Map
from iou_maps.exports.mbtiles import MBTILES
from iou_maps.exports.options import ExportOptions, Progress
from iou_maps.exports.pmtiles import PMTILES
from iou_maps.exports.summary import ExportSummary

__all__ = ["FORMATS", "export_format", "export_storm", "format_of_file"]

#: Every export format, by name (the CLI's ``--format`` values, in this order).
FORMATS: dict[str, ExportFormat] = {
    PMTILES.name: PMTILES,
    MBTILES.name: MBTILES,
    COG.name: COG,
}


def export_format(name: str) -> ExportFormat:
    """The format called ``name``; UnknownExportFormat naming the valid ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise UnknownExportFormat(
            f"unknown export format {name!r}; valid: {', '.join(FORMATS)}"
        ) from None


def format_of_file(path: Path) -> ExportFormat | None:
    """The format whose files have ``path``'s suffix, if any."""
    suffix = path.suffix.lower()
    return next((f for f in FORMATS.values() if suffix in f.suffixes), None)


def export_storm(
    format_name: str,
    engine: MetricEngine,
    layer: Map,
    out: Path,
    options: ExportOptions | None = None,
    *,
    fill_progress: Progress | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """Export ``layer`` to ``out`` in the format called ``format_name`` (``ExportFormat.write``)."""
    return export_format(format_name).write(
        engine, layer, out, options or ExportOptions(),
        fill_progress=fill_progress, progress=progress,
    )  # fmt: skip
