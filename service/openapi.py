"""The OpenAPI document, completed with what FastAPI cannot infer from the routes.

- Errors: every operation documents each status it can answer besides success, always as JSON
  (``{"detail": ...}``) whatever its success media type (images, XML): 422 where it takes
  parameters, 404 where it names a storm or a coordinate (or asks for true/error values), 204
  and 500 where it reads scenes, 503 (with Retry-After) where a metric point waits for the
  model, or where true values need the missing segmentation model.
  titiler's routes say none of this themselves.
- Caching: tiles, TileJSON and WMTS of a storm declare their ETag and Cache-Control headers
  and the 304 Not Modified of a matching If-None-Match (service/http_cache.py).
- Tuples: pydantic writes fixed-length arrays with OpenAPI 3.1's ``prefixItems``, which
  OpenAPI 3.0 tools ignore and schemathesis (4.32) rejects in a response schema. They are
  written as ``items`` with min/maxItems instead: the same constraint for tuples of one item
  type (bounds, coordinates, RGBA colours); for the one mixed tuple (a colormap interval,
  ``[[min, max], colour]``) a slightly looser one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from service.http_cache import describe_caching, route_kind
from service.models import ErrorDetail

ERROR_REF = "#/components/schemas/ErrorDetail"
VALIDATION_REF = "#/components/schemas/HTTPValidationError"


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_responses(
    path_params: set[str], has_params: bool, query_params: frozenset[str] = frozenset()
) -> dict[str, dict[str, Any]]:
    """The non-success responses of an operation, from the names of its parameters."""
    error = {"$ref": ERROR_REF}
    out: dict[str, dict[str, Any]] = {}
    reads_tile = {"z", "x", "y"} <= path_params
    reads_point = {"lon", "lat"} <= path_params
    has_source = "source" in query_params
    if reads_tile:
        out["204"] = {"description": "No scene under this tile: nothing to draw."}
    if "storm" in path_params:
        what = (
            "Unknown storm, or a coordinate outside every scene."
            if reads_point
            else ("Unknown storm.")
        )
        if "metric" in path_params:
            what += " A metric this model does not have (the message names its metrics)."
        if has_source:
            what += " For source=true or error: a storm without labels" + (
                ", or no true value at this coordinate." if reads_point else "."
            )
        out["404"] = _json(what, error)
    if has_params:
        out["422"] = _json(
            "Invalid parameter: FastAPI's list of validation errors, or a message naming it.",
            {"anyOf": [{"$ref": VALIDATION_REF}, error]},
        )
    if reads_tile or reads_point:
        out["500"] = _json("A scene file could not be read (the message names the scene).", error)
    if has_source and not reads_point:
        out["503"] = _json(
            "source=true or error: the segmentation model of the true metrics is missing.", error
        )
    if reads_point and "storm" in path_params:
        out["503"] = {
            **_json(
                "The model is busy (the compute queue is full): retry later; or, for "
                "source=true or error, the segmentation model is missing.",
                error,
            ),
            "headers": {
                "Retry-After": {
                    "description": "Seconds until the queue has likely drained.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        }
    return out


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (FastAPI's document) with error responses and 3.0-compatible tuples."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorDetail", ErrorDetail.model_json_schema())
    components.setdefault(
        "HTTPValidationError", {"type": "object", "properties": {"detail": {"type": "array"}}}
    )
    for path, operations in schema.get("paths", {}).items():
        kind = route_kind(path) if "{storm}" in path else None
        for operation in operations.values():
            params = operation.get("parameters", [])
            path_params = {p["name"] for p in params if p.get("in") == "path"}
            query_params = frozenset(p["name"] for p in params if p.get("in") == "query")
            responses = operation.setdefault("responses", {})
            responses.update(error_responses(path_params, bool(params), query_params))
            if kind is not None:
                describe_caching(operation, kind)
    _plain_tuples(schema)
    return schema


def _plain_tuples(node: Any) -> None:
    """Rewrite ``prefixItems`` as ``items`` (any of the tuple's item types) of the tuple's
    length, in place."""
    if isinstance(node, list):
        for item in node:
            _plain_tuples(item)
        return
    if not isinstance(node, dict):
        return
    prefix = node.get("prefixItems")
    if isinstance(prefix, list) and prefix and "items" not in node:
        unique: list[Any] = []
        for item in prefix:
            if item not in unique:
                unique.append(item)
        node.pop("prefixItems")
        node["items"] = unique[0] if len(unique) == 1 else {"anyOf": unique}
        node.setdefault("minItems", len(prefix))
        node.setdefault("maxItems", len(prefix))
    for value in node.values():
        _plain_tuples(value)


def install(app: FastAPI) -> None:
    """Serve ``complete``'s document at ``/openapi.json`` (built once, on first request)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if not getattr(app.state, "openapi_completed", False):
            app.openapi_schema = complete(build())
            app.state.openapi_completed = True
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
