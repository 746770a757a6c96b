"""What every dependency module uses: running a dependency on the event loop, and the 422 of a
parameter that its schema could not reject."""

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import HTTPException

T = TypeVar("T")


def inline(dependency: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """``dependency`` run on the event loop, with the same parameters and documentation.

    FastAPI runs every plain ``def`` dependency in its thread pool: a thread hop each, for
    functions that only check query and path parameters. They add up on a tile request.
    """

    @functools.wraps(dependency)
    async def run(**kwargs: object) -> T:
        return dependency(**kwargs)

    run.__signature__ = inspect.signature(dependency, eval_str=True)  # type: ignore[attr-defined]
    return run


def bad_param(name: str, message: str) -> HTTPException:
    """The 422 of an invalid ``name`` parameter (FastAPI's own checks answer 422 too)."""
    return HTTPException(status_code=422, detail=f"{name}: {message}")
