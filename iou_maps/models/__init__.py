"""Models: the segmentation model, the metric regressor, metrics and classes, where models live."""
