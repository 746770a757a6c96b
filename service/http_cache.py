"""HTTP caching of tiles, TileJSON and WMTS: Cache-Control, strong ETags, 304 Not Modified,
and the server-side imagery tile cache (iou_maps.compute.tile_cache).

An ETag is a hash of everything that decides a response's bytes: the renderer (the versions
of the code that encodes tiles), the storm's catalogue version (a hash of its footprints
file: a re-ingest that changes a scene changes it), the model ids (metric layers: the
regressor's and the segmentation model's of the true values), the path (tile address and
format) and the whole query string in one spelling (every parameter, so
a new one needs nothing here), plus the base URL for TileJSON and WMTS (they hold absolute
URLs). The same request gets the same ETag in every process and on every host.

- Imagery tiles, TileJSON and WMTS: their bytes follow from those inputs alone, so the ETag
  is known before the handler runs, and a matching ``If-None-Match`` is answered 304 before
  anything is read (``CachingRoute``, the route class of their routers). A low-zoom imagery
  tile is then looked up in the tile cache, and rendered and kept there on a miss.
- Metric tiles: their cells are cached values, which a later precompute may replace (its
  aggregates are not the on-the-fly means; values recomputed after an eviction) and which a
  request may not have complete. So their ETag also hashes the cells, after the one cache
  read, before anything is encoded: a 304 costs that read and never vouches for other
  bytes. An incomplete tile (``X-IoU-Missing`` > 0) gets ``no-store`` and no ETag.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from anyio import to_thread
from attrs import define
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.tile_cache import RENDERER, CachedTile, TileCache, canonical_query, tile_key
from iou_maps.storms.catalog import Storm
from iou_maps.storms.imagery import TMS
from service.errors import status_code

#: Headers of a rendered imagery tile that the tile cache keeps with its bytes.
KEPT_HEADERS = ("Content-Bbox", "Content-Crs")
#: Says whether an imagery tile came from the tile cache (hit), was rendered and kept (miss),
#: or was rendered at a zoom the cache does not keep (absent).
TILE_CACHE_HEADER = "X-IoU-Tile-Cache"

Kind = Literal["tile", "metadata"]


def _service_renderer() -> str:
    """RENDERER plus this package's code that decides response bytes (parameters, defaults,
    documents), its subpackages' too: a deployment that changes it gets new ETags."""
    code = hashlib.blake2b(digest_size=6)
    for module in sorted(Path(__file__).parent.rglob("*.py")):
        code.update(module.read_bytes())
    return f"{RENDERER} service/{code.hexdigest()}"


#: What renders the responses, in every ETag.
SERVICE_RENDERER = _service_renderer()

_TILE_PATH = re.compile(r"/tiles/\{tileMatrixSetId\}/\{z\}/\{x\}/\{y\}(\.\{format\})?$")
_METADATA_PATH = re.compile(r"(/tilejson\.json|/WMTSCapabilities\.xml)$")


def route_kind(path: str) -> Kind | None:
    """Which caching a route of this path template gets (None: none, e.g. point lookups)."""
    if _TILE_PATH.search(path):
        return "tile"
    if _METADATA_PATH.search(path):
        return "metadata"
    return None


def strong_etag(*parts: str) -> str:
    """A quoted strong entity tag hashing ``parts``."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()
    return f'"{digest}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110's If-None-Match test (weak comparison: ``W/`` prefixes are ignored)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(
        tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(",") if tag.strip()
    )


def cells_digest(values: np.ndarray, has_imagery: np.ndarray) -> str:
    """A hash of a metric tile's cells (values and where there is imagery)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(has_imagery, dtype=bool).tobytes())
    h.update(str(values.shape).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Validator:
    """A request's validation state: the ETag inputs known before reading anything, and the
    client's ``If-None-Match``. Metric tiles add their cells (``etag``)."""

    base: str
    if_none_match: str | None
    cache_control: str

    def etag(self, *extra: str) -> str:
        """The strong ETag of the response, from what determines its bytes (and ``extra``)."""
        return strong_etag(self.base, *extra)

    def not_modified(self, etag: str) -> Response | None:
        """A 304 if the client holds ``etag``, else None."""
        if etag_matches(self.if_none_match, etag):
            return Response(
                status_code=304, headers={"ETag": etag, "Cache-Control": self.cache_control}
            )
        return None

    def headers(self, etag: str) -> dict[str, str]:
        """The caching headers of a response with ``etag``."""
        return {"ETag": etag, "Cache-Control": self.cache_control}


@define(kw_only=True)
class HttpCaching:
    """The HTTP caching policy of the service, and the imagery tile cache."""

    engine: MetricEngine
    #: max-age of complete tiles, and of TileJSON/WMTS documents (seconds).
    max_age: int = 86400
    metadata_max_age: int = 300
    immutable: bool = False
    tile_cache: TileCache | None = None
    #: Imagery tiles this many zooms below the storm's native zoom and lower are kept.
    cache_below: int = 2

    # ------------------------------------------------------------------ policy

    def cache_control(self, kind: Kind) -> str:
        """The Cache-Control value for a response of ``kind``."""
        if kind == "metadata":
            return f"public, max-age={self.metadata_max_age}"
        control = f"public, max-age={self.max_age}"
        return f"{control}, immutable" if self.immutable else control

    def storm_of(self, name: str | None) -> Storm | None:
        """The storm named in a path, or None where the handler will answer an error."""
        if not name:
            return None
        try:
            return self.engine.storm(name).storm
        except Exception:  # invalid or unknown storm, unreadable catalogue: the route says
            return None

    def inputs(self, storm: Storm, path: str, query: Iterable[tuple[str, str]], model: bool) -> str:
        """What decides a response's bytes, besides the cells of a metric tile (its ETag and
        the key of its kept bytes, service/fast_tiles.py, hash it)."""
        return "\x1f".join(
            (
                SERVICE_RENDERER,
                storm.version,
                # The layers' true and error values depend on the segmentation model too.
                self.engine.sources.all_ids if model else "-",
                path,
                canonical_query(query),
            )
        )

    def validator(self, request: Request, storm: Storm, kind: Kind, model: bool) -> Validator:
        """The validation state of ``request`` for ``storm``."""
        base = self.inputs(storm, request.url.path, request.query_params.multi_items(), model)
        if kind == "metadata":
            base += "\x1f" + str(request.base_url)  # absolute URLs in the document
        return Validator(base, request.headers.get("if-none-match"), self.cache_control(kind))

    def metric_validator(self) -> Callable[..., Awaitable[Validator | None]]:
        """A dependency: the validation state of a metric tile request (its storm resolved
        again from the engine's cache: no second disk read)."""

        async def MetricTileValidator(request: Request) -> Validator | None:
            storm = self.storm_of(request.path_params.get("storm"))
            if storm is None:
                return None
            return self.validator(request, storm, "tile", model=True)

        return MetricTileValidator

    # ------------------------------------------------------------------ imagery tile cache

    def _tile_key(self, request: Request, storm: Storm) -> str | None:
        """The tile cache key of an imagery tile request, or None where tiles are not kept
        (no cache, no format in the path, a zoom deep enough to be cheap)."""
        params = request.path_params
        if self.tile_cache is None or "format" not in params:
            return None
        try:
            z, x, y = (int(params[k]) for k in ("z", "x", "y"))
        except (KeyError, ValueError):
            return None
        if params.get("tileMatrixSetId") != TMS:
            return None
        maxzoom = self.engine.storm(storm.name).backend.maxzoom
        if z > maxzoom - self.cache_below:
            return None
        query = canonical_query(request.query_params.multi_items())
        return tile_key(storm.name, storm.version, TMS, z, x, y, str(params["format"]), query)

    # ------------------------------------------------------------------ routes

    def wrap(
        self,
        handler: Callable[[Request], Coroutine[Any, Any, Response]],
        kind: Kind,
        model: bool,
    ) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """``handler`` with validation, cache headers and (imagery tiles) the tile cache."""
        cache = self.tile_cache

        async def cached(request: Request) -> Response:
            storm = self.storm_of(request.path_params.get("storm"))
            if storm is None:
                return await handler(request)
            validator = self.validator(request, storm, kind, model)
            etag = validator.etag()
            if (not_modified := validator.not_modified(etag)) is not None:
                return not_modified  # before any parameter check or read
            headers = validator.headers(etag)
            key = self._tile_key(request, storm) if kind == "tile" else None
            if key is not None and cache is not None:
                hit = await to_thread.run_sync(cache.get, key)
                if hit is not None:
                    return Response(
                        hit.content,
                        media_type=hit.media_type,
                        headers={**hit.headers, **headers, TILE_CACHE_HEADER: "hit"},
                    )
            try:
                response = await handler(request)
            except Exception as exc:
                if kind != "tile" or status_code(exc) != 204:
                    raise
                # No scene data under the tile: a fact of this catalogue version.
                return Response(status_code=204, headers=headers)
            if not 200 <= response.status_code < 300 or "cache-control" in response.headers:
                return response
            response.headers.update(headers)
            if key is not None and cache is not None and response.status_code == 200:
                body = bytes(response.body)
                kept = {h: response.headers[h] for h in KEPT_HEADERS if h in response.headers}
                tile = CachedTile(body, response.media_type or "", kept)
                await to_thread.run_sync(cache.put, key, tile)
                response.headers[TILE_CACHE_HEADER] = "miss"
            return response

        return cached

    def route_class(self, *, model: bool, skip: tuple[str, ...] = ()) -> type[APIRoute]:
        """An APIRoute class (for ``APIRouter(route_class=...)``) whose tile, TileJSON and
        WMTS routes are wrapped by ``wrap``. ``model``: the responses depend on the model;
        ``skip``: path templates whose endpoints validate themselves (metric tiles)."""
        caching = self

        class CachingRoute(APIRoute):
            def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
                handler = super().get_route_handler()
                kind = route_kind(self.path)
                if kind is None or self.path in skip:
                    return handler
                return caching.wrap(handler, kind, model)

        return CachingRoute


def describe_caching(operation: dict[str, Any], kind: Kind) -> None:
    """Document the caching headers and the 304 of an operation of ``kind`` in OpenAPI."""
    headers = {
        "ETag": {
            "description": "Strong entity tag of this response (send it as If-None-Match).",
            "schema": {"type": "string"},
        },
        "Cache-Control": {
            "description": (
                "public, max-age=N (N set by the operator; no-store on an incomplete metric tile)."
                if kind == "tile"
                else "public, max-age=N (N set by the operator)."
            ),
            "schema": {"type": "string"},
        },
    }
    responses = operation.setdefault("responses", {})
    for status in ("200", "204"):
        if status in responses:
            responses[status].setdefault("headers", {}).update(headers)
    responses["304"] = {
        "description": "Not Modified: the If-None-Match request header holds this "
        "response's current ETag (no body).",
        "headers": headers,
    }
