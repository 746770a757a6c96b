"""TensorFlow and Keras, imported in one place: TensorFlow comes with an extra of the package
(``cpu`` or ``gpu``), so a missing one gets an error that says how to install it."""

try:
    import keras
    import tensorflow as tf
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] not in ("tensorflow", "keras"):
        raise
    raise ModuleNotFoundError(
        "IoU Maps needs TensorFlow, which comes with an extra of the package: "
        "pip install 'iou-maps[cpu]' (or 'iou-maps[gpu]' for NVIDIA GPUs)",
        name=exc.name,
    ) from exc

__all__ = ["keras", "tf"]
