"""IoU Maps: where a segmentation model of post-storm aerial imagery can be trusted.

From Python: ``iou_maps.open_storm(name)`` (see ``iou_maps.api``).
"""

from iou_maps.models import runtime

# Every module that imports TensorFlow is in this package, so this runs first: until a process
# says it only infers (``runtime.inference_process``), TensorFlow gets the settings that are
# safe for training (oneDNN off: see iou_maps/models/runtime.py). A value the user sets wins.
runtime.training_process()

# After the line above, which must run before anything can import TensorFlow.
from iou_maps.api import LayerInfo, PointMetrics, StormMaps, open_storm  # noqa: E402

__all__ = ["LayerInfo", "PointMetrics", "StormMaps", "open_storm"]
