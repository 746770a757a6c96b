"""Exceptions → HTTP status codes, as JSON ``{"detail": ...}`` (titiler's handlers plus ours).

Nothing to show is not an error: a tile with no scene under it is a 204 No Content (as
titiler.mosaic answers), a point outside every scene a 404.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from rio_tiler.errors import EmptyMosaicError, NoAssetFoundError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from titiler.core.errors import DEFAULT_STATUS_CODES

from iou_maps.errors import (
    BadBBox,
    BadBudget,
    BadClassSet,
    BadTileFormat,
    BadTileSize,
    CacheUnavailable,
    CalibrationError,
    ClassSetMismatch,
    ConfigError,
    CorruptCacheValue,
    ExportError,
    ImageryReadError,
    InvalidModelName,
    InvalidStormName,
    InvalidTile,
    IoUMapsError,
    LabelClassError,
    LayerNotFillable,
    MetricNotInModel,
    ModelFilesMissing,
    ModelNotFound,
    NoLabels,
    NoSceneAt,
    OffGrid,
    OutsideStorm,
    RegressorError,
    SceneReadError,
    SettingsError,
    SourceSceneError,
    StacError,
    StormNotFound,
    SyntheticStormError,
    TrainingDataError,
    UnknownExportFormat,
    UnknownLayer,
    UnknownMetric,
    UnsupportedLayer,
    WeightsError,
)

log = logging.getLogger(__name__)

#: The one table of exception → status: the handlers and the HTTP cache (a tile of no scene)
#: look statuses up here alone. Every class of iou_maps/errors.py has its line.
STATUS_CODES: dict[type[Exception], int] = {
    **DEFAULT_STATUS_CODES,
    NoAssetFoundError: 204,  # no scene under the tile
    EmptyMosaicError: 204,  # scenes there, but no data in the tile
    # Not found: the request names what is not there.
    StormNotFound: 404,
    OutsideStorm: 404,
    NoSceneAt: 404,
    NoLabels: 404,  # true/error values of a storm without labels
    MetricNotInModel: 404,  # a metric the layer's model does not have
    # Bad input of the request.
    InvalidStormName: 422,
    InvalidTile: 422,
    BadBBox: 422,
    BadTileSize: 422,
    UnknownLayer: 422,
    LayerNotFillable: 422,
    SourceSceneError: 422,
    SyntheticStormError: 422,
    CalibrationError: 422,
    ExportError: 422,
    UnknownExportFormat: 422,
    UnsupportedLayer: 422,
    BadTileFormat: 422,
    InvalidModelName: 422,
    UnknownMetric: 422,
    BadBudget: 422,
    TrainingDataError: 422,
    BadClassSet: 422,
    LabelClassError: 422,
    # The server's own files and services, not the request: the operator's to fix.
    ModelNotFound: 503,
    ConfigError: 500,
    ModelFilesMissing: 503,  # the model's files are not where the settings say
    WeightsError: 500,
    RegressorError: 500,
    ClassSetMismatch: 500,  # the operator paired models of different class sets
    ImageryReadError: 500,
    SceneReadError: 500,
    CacheUnavailable: 500,
    CorruptCacheValue: 500,
    SettingsError: 500,
    StacError: 500,
    OffGrid: 500,  # control flow inside the library: reaching a handler is a bug
    IoUMapsError: 500,  # any other of ours: a JSON message, not a bare 500
}


def status_code(exc: BaseException) -> int | None:
    """The status of ``exc`` in ``STATUS_CODES``: its class's, else its nearest parent's (as
    Starlette picks a handler); None for an exception outside the table."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return None


def describe(exc: BaseException) -> str:
    """The message of ``exc`` and of its causes: rasterio's "Read failed. See previous exception"
    only names the file in the GDAL error it chains."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(parts) < 5:
        seen.add(id(cur))
        msg = str(cur).strip()
        if msg and not any(msg in p for p in parts):
            parts.append(msg)
        cur = cur.__cause__ or cur.__context__
    return " — ".join(parts) or type(exc).__name__


def _handler(status_code: int, data_dir: str) -> Callable[[Request, Exception], Response]:
    def handler(request: Request, exc: Exception) -> Response:
        if status_code == 204:
            return Response(status_code=204)  # no body, by definition
        if status_code >= 500:
            log.error("%s %s → %s: %s", request.method, request.url.path, status_code, exc)
        # Messages from GDAL name files by absolute path: show them relative to the data dir.
        detail = describe(exc) if status_code >= 500 else str(exc)
        if data_dir:
            detail = detail.replace(data_dir + "/", "")
        return JSONResponse({"detail": detail}, status_code=status_code)

    return handler


def add_exception_handlers(app: FastAPI, data_dir: Path) -> None:
    """``data_dir`` must be the absolute path the catalog was opened with."""
    for exc, code in STATUS_CODES.items():
        app.add_exception_handler(exc, _handler(code, str(data_dir)))
