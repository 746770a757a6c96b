"""The metric regressor: predicted segmentation-quality metrics for a chip, without a label.

- ``network``: the model, a frozen part of the segmentation model plus dense heads, of two
  kinds (``build_regressor``, ``KINDS``);
- ``model``: a loaded regressor and its predictions (``Regressor``);
- ``files``: a regressor on disk and its model id (``load_regressor``, ``save_regressor``);
- ``features``: the features its heads read, computed for training as served (``encode``);
- ``train``: fitting the heads, and the validation report (``train_regressor``).

The names below are the package's public API; the library imports them from their modules.
"""

from iou_maps.models.regressor.files import load_regressor, save_regressor
from iou_maps.models.regressor.model import Regressor
from iou_maps.models.regressor.network import KINDS, build_regressor
from iou_maps.models.regressor.train import train_regressor

__all__ = [
    "KINDS",
    "Regressor",
    "build_regressor",
    "load_regressor",
    "save_regressor",
    "train_regressor",
]
