"""The ``true`` layer: the segmentation model scored against the storm's label rasters."""

from iou_maps.compute.truth import TRUE_NAMESPACE
from iou_maps.layers.base import SEGMENTATION, Layer

TRUE = Layer(
    name="true",
    title="True",
    description="the segmentation model scored against the storm's labels (labelled tiles)",
    aggregate="the mean of the analysis tiles' true values under the cell",
    key_space=TRUE_NAMESPACE,
    roles=(SEGMENTATION,),
    needs_labels=True,
    computed_by=SEGMENTATION,
    noun="true values",
)
