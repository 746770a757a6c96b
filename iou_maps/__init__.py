"""IoU Maps: where a segmentation model of post-storm aerial imagery can be trusted."""

import os

# TensorFlow's oneDNN kernels corrupt the heap while training a Keras model on some AVX-512
# CPUs (seen on AMD EPYC: "corrupted double-linked list", then SIGABRT/SIGSEGV in model.fit).
# Its default Eigen kernels are stable there. Every module that imports TensorFlow is in this
# package, so setting it here comes first; an explicit setting in the environment wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
