"""``python -m iou_maps.cli``: the command line."""

from iou_maps.cli.app import app

app()
