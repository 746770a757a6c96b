"""The ``iou-maps`` command line (Typer + Rich): the app, with every group's commands."""

from __future__ import annotations

import os

import typer

from iou_maps.cli import exports, models, precompute, serve, storms

# TensorFlow's C++ start-up chatter buries the progress bars; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

app = typer.Typer(
    help="IoU Maps: where a segmentation model of post-storm imagery can be trusted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# In this order in `--help`: data, models, the cache, the service, files out.
app.command()(storms.synth)
app.command("ingest")(storms.ingest_cmd)
app.command()(storms.storms)
app.command("train-segmentation")(models.train_segmentation_cmd)
app.command()(models.evaluate)
app.command("train-regressor")(models.train_regressor_cmd)
app.command()(models.predict)
app.command("precompute")(precompute.precompute_cmd)
app.command()(serve.demo)
app.command()(serve.serve)
app.command("export")(exports.export_cmd)
app.command("stac")(exports.stac_cmd)
