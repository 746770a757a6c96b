"""The ``iou-maps`` command line (Typer + Rich)."""
