"""The ``predicted`` layer: the metric regressor's values, from the imagery alone."""

from iou_maps.compute.metric_store import PREDICTED_NAMESPACE
from iou_maps.layers.base import REGRESSOR, Layer

PREDICTED = Layer(
    name="predicted",
    title="Predicted",
    description="the metric regressor's prediction from the imagery alone (every analysis tile)",
    aggregate="the mean of the analysis tiles' predicted values under the cell",
    key_space=PREDICTED_NAMESPACE,
    roles=(REGRESSOR,),
    computed_by=REGRESSOR,
    noun="predictions",
    primary=True,
)
