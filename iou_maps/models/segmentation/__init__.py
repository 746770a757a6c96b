"""The segmentation model (segmentation_gym-compatible): config, network, files, training.

- ``config``: a segmentation_gym ``config.json`` read and checked (``SegmentationConfig``);
- ``network``: the UNet built from it (``build_model``);
- ``model``: the model with its config, predicting as segmentation_gym does
  (``SegmentationModel``);
- ``files``: a model directory on disk, weights in segmentation_gym's HDF5 layout
  (``load_segmentation``, ``save_segmentation``);
- ``train``: training on labelled chips (``train_segmentation``).

The names below are the package's public API; the library imports them from their modules.
"""

from iou_maps.models.segmentation.config import SegmentationConfig, demo_config
from iou_maps.models.segmentation.files import load_segmentation, save_segmentation
from iou_maps.models.segmentation.model import SegmentationModel
from iou_maps.models.segmentation.network import build_model
from iou_maps.models.segmentation.train import train_segmentation

__all__ = [
    "SegmentationConfig",
    "SegmentationModel",
    "build_model",
    "demo_config",
    "load_segmentation",
    "save_segmentation",
    "train_segmentation",
]
