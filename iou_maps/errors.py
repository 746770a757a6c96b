"""Every exception of the IoU Maps library, under one base (as rio-tiler's ``errors.py``).

Each also keeps the built-in parent that says what kind of failure it is, so callers may
catch ``IoUMapsError`` for anything of ours, or ``LookupError`` / ``ValueError`` /
``RuntimeError`` as before. The service maps them to HTTP status codes in one place
(``service/errors.py``).
"""

from __future__ import annotations


class IoUMapsError(Exception):
    """Base of every IoU Maps exception."""


# --------------------------------------------------------------------------- not found (404)


class StormNotFound(IoUMapsError, LookupError):
    """No ingested storm of that name under the data directory."""


class ModelNotFound(IoUMapsError, LookupError):
    """No model of that name (or not the part asked for) under the data directory."""


class OutsideStorm(IoUMapsError, LookupError):
    """A coordinate outside every scene of a storm."""


class NoSceneAt(IoUMapsError, LookupError):
    """No scene of a storm covers a coordinate."""


class NoLabels(IoUMapsError, LookupError):
    """A storm without label rasters: no true metrics there, hence no error layer."""


# --------------------------------------------------------------------------- bad input (422)


class InvalidStormName(IoUMapsError, ValueError):
    """A storm name outside ``[a-z0-9][a-z0-9_-]{0,63}``."""


class ConfigError(IoUMapsError, ValueError):
    """A segmentation config that segmentation_gym (or this module) cannot use."""


class WeightsError(IoUMapsError, ValueError):
    """A weights file that does not fit the model built from its config."""


class RegressorError(IoUMapsError, ValueError):
    """A regressor that cannot be used (missing files, mismatched classes, tampered files)."""


class CalibrationError(IoUMapsError, ValueError):
    """Intervals that cannot be calibrated (too few labelled tiles, a level outside (0, 1))
    or a malformed calibration record."""


class ExportError(IoUMapsError, ValueError):
    """Export options that cannot be honoured, or nothing to export; the message says which."""


# --------------------------------------------------------------------------- failures (5xx)


class SceneReadError(IoUMapsError, RuntimeError):
    """A scene file of a storm could not be read; the message names the scene."""


class ImageryReadError(IoUMapsError, RuntimeError):
    """A scene needed for a tile could not be read (e.g. a corrupt file)."""


class CacheUnavailable(IoUMapsError, RuntimeError):
    """Precompute needs a reachable Redis: without it there is nothing to fill."""


class StacError(IoUMapsError, RuntimeError):
    """The catalog cannot be written or is not valid; the message says why."""


# --------------------------------------------------------------------------- control flow


class OffGrid(IoUMapsError):
    """A tile that is not on its scenes' pixel grid: read it with ``mosaic.read_tile``."""


# --------------------------------------------------------------------------- storms (bad input)


class SourceSceneError(IoUMapsError, ValueError):
    """A source file that ingest cannot make a scene of (not 8-bit RGB, not georeferenced,
    corners off the globe, a label of another size, no valid pixels); the message says why."""


class SyntheticStormError(IoUMapsError, ValueError):
    """Options a synthetic storm cannot be generated with (format, scenes, size, gsd)."""


class InvalidTile(IoUMapsError, ValueError):
    """A tile address with a coordinate out of range; the message names it."""


# Layers


class UnknownLayer(IoUMapsError, ValueError):
    """A layer (``source``) name that no layer has."""


class BadBBox(IoUMapsError, ValueError):
    """A bounding box that is not W,S,E,N with W < E and S < N."""


class LayerNotFillable(IoUMapsError, ValueError):
    """A layer precompute cannot fill by itself (a derived one: it comes with its input)."""


# --------------------------------------------------------------------------- exports


class UnknownExportFormat(ExportError):
    """An export format name that no format is registered under."""


class UnsupportedLayer(ExportError):
    """A layer an export format cannot hold (e.g. imagery in a COG of metric values)."""


class BadTileFormat(ExportError):
    """A tile encoding that a layer's tiles cannot have in an archive."""


# --------------------------------------------------------------------------- settings, cache, tiles


class SettingsError(IoUMapsError, ValueError):
    """A setting (environment variable) the service cannot use; the message names it."""


class CorruptCacheValue(IoUMapsError, ValueError):
    """Bytes in the metric cache that are no packed metric vector."""


class BadTileSize(IoUMapsError, ValueError):
    """A tile size the metric grid cannot be drawn at (not a multiple of its cells)."""


# --------------------------------------------------------------------------- models


class InvalidModelName(IoUMapsError, ValueError):
    """A model name outside ``[a-z0-9][a-z0-9_-]{0,63}``."""


class UnknownMetric(IoUMapsError, ValueError):
    """A metric name that is not one of a model's (``ClassSet.metrics``)."""


class TrainingDataError(IoUMapsError, ValueError):
    """Labelled data that cannot train or evaluate a model: none, too few scenes, or labels
    that do not fit the images; the message says which."""


class ModelFilesMissing(IoUMapsError, FileNotFoundError):
    """A segmentation model folder (or file) that is not there; the message names it."""


# --------------------------------------------------------------------------- Python API


class BadBudget(IoUMapsError, ValueError):
    """A compute budget that is not a number of tiles (0 or more)."""


# --------------------------------------------------------------------------- class sets


class BadClassSet(IoUMapsError, ValueError):
    """A class set that cannot be: fewer than 2 classes, names repeated or not URL-safe
    (``[a-z0-9_]+``), or a list of names whose length is not the model's ``NCLASSES``."""


class ClassSetMismatch(RegressorError):
    """A regressor trained for another class set than the segmentation model it names."""


class LabelClassError(IoUMapsError, ValueError):
    """A label raster holding class ids outside the model's classes (and nodata); the message
    names the file."""


class MetricNotInModel(UnknownMetric, LookupError):
    """A metric the model behind a layer does not have (e.g. ``iou_sand`` of a 2-class
    model); the message names the valid ones."""
