"""IoU Maps: where a segmentation model of post-storm aerial imagery can be trusted.

From Python (a notebook): ``from iou_maps.api import open_storm``.
"""

from iou_maps.models import runtime

# Every module that imports TensorFlow is in this package, so this runs first: until a process
# says it only infers (``runtime.inference_process``), TensorFlow gets the settings that are
# safe for training (oneDNN off: see iou_maps/models/runtime.py). A value the user sets wins.
runtime.training_process()
