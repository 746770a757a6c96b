"""The commands that end in the tile service: ``demo`` (the whole pipeline, then the
server) and ``serve``."""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Annotated

import typer

from iou_maps.cli.output import DataDir, draw_progress, out, progress_bar, rich_progress, settings
from iou_maps.layers.registry import computed_layers
from iou_maps.models import runtime


def demo(
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the server at the end.")
    ] = True,
    host: Annotated[str | None, typer.Option(help="Bind address for the server.")] = None,
    port: Annotated[int | None, typer.Option(help="Port for the server.")] = None,
    data_dir: DataDir = None,
) -> None:
    """The whole pipeline on synthetic storms, then the server; reuses what already exists.

    synthetic storm + validation storm → ingest → train segmentation → evaluate → train
    regressor → precompute (predicted, then true and error values) → serve. Uses the
    embedded Redis unless REDIS_URL is set.
    """
    from iou_maps.cli.demo import DemoPlan, prepare
    from iou_maps.compute.engine import open_engine
    from iou_maps.compute.precompute import precompute

    s = settings(data_dir)
    plan = DemoPlan(data_dir=s.data_dir, model=s.model, analysis_zoom=s.analysis_zoom)
    started = time.perf_counter()
    with progress_bar() as bar:
        storm, _val, _reg = prepare(plan, progress=rich_progress(bar), log=bar.console.print)
    s.model = plan.model
    engine = open_engine(s)
    for layer in computed_layers():
        with progress_bar() as bar:
            task = bar.add_task(f"precompute {storm.name} {layer.name}", total=None, rate="")
            summary = precompute(
                engine, storm.name, source=layer,
                progress=functools.partial(draw_progress, bar, task),
            )  # fmt: skip
        out.print(
            f"precompute {storm.name} {layer.name}: {summary.computed} computed, "
            f"{summary.already_cached} already cached, {summary.failed} failed"
        )
    out.print(f"demo ready in {time.perf_counter() - started:.0f} s")
    engine.close()
    del engine  # releases the embedded Redis before the server opens it
    if serve_after:
        # This process trained, so TensorFlow runs here with oneDNN off, and it cannot switch
        # once imported: the server replaces it as a fresh process that only infers.
        argv = [sys.executable, "-m", "iou_maps.cli", "serve", "--data-dir", str(s.data_dir)]
        argv += ["--host", host] if host is not None else []
        argv += ["--port", str(port)] if port is not None else []
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)


def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default: $IOU_MAPS_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: $IOU_MAPS_PORT or 8000).")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="API processes (uvicorn workers) sharing the port; each runs the model in "
            "$IOU_MAPS_INFERENCE_PROCESSES worker processes of its own, and all compute each "
            "tile once between them (Redis locks).",
        ),
    ] = 1,
    data_dir: DataDir = None,
) -> None:
    """Run the tile service (imagery + metric tiles, point lookup, viewer at /)."""
    runtime.inference_process()
    import uvicorn

    s = settings(data_dir)
    if host is not None:
        s.host = host
    if port is not None:
        s.port = port
    # The library never imports the web layer: uvicorn loads the app factory by name, and
    # the factory reads the same settings from the environment.
    os.environ["IOU_MAPS_DATA_DIR"] = str(s.data_dir)
    out.print(f"IoU Maps viewer: http://{s.host}:{s.port}/")
    uvicorn.run("service.app:app_from_env", factory=True, host=s.host, port=s.port, workers=workers)
