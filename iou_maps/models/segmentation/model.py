"""A segmentation_gym model with its config, predicting as segmentation_gym predicts.

Preprocessing follows doodleverse_utils: resize to TARGET_SIZE, per-image standardisation with
an adjusted standard deviation, softmax scores resized back to the input size, then argmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from iou_maps.models.backend import keras, tf
from iou_maps.models.model_layers import model_input
from iou_maps.models.segmentation.config import SegmentationConfig


def standardize(images: np.ndarray) -> np.ndarray:
    """doodleverse_utils.standardize per image: (x - mean) / max(std, 1/sqrt(H*W)).

    Mean and std run over all pixels and bands of each image; N = H*W, as in segmentation_gym.
    Accepts one H,W,C image or an N,H,W,C batch; returns float32.
    """
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected H,W,C or N,H,W,C images, got shape {x.shape}")
    x64 = x.astype(np.float64)
    axes = (-3, -2, -1)
    n = x.shape[-3] * x.shape[-2]
    m = x64.mean(axis=axes, keepdims=True)
    s = np.maximum(x64.std(axis=axes, keepdims=True), 1.0 / math.sqrt(n))
    return ((x64 - m) / s).astype(np.float32)


@dataclass
class SegmentationModel:
    """A segmentation_gym model with its config: prediction as segmentation_gym predicts."""

    cfg: SegmentationConfig
    model: keras.Model

    def _check(self, images: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[-1] != self.cfg.n_data_bands:
            raise ValueError(
                f"expected N,H,W,{self.cfg.n_data_bands} images, got shape {images.shape}"
            )

    def predict_proba(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Softmax scores N,H,W,NCLASSES at the input size: resize, standardize, resize back."""
        images = np.asarray(images)
        self._check(images)
        n, h, w = images.shape[:3]
        out = np.empty((n, h, w, self.cfg.nclasses), dtype=np.float32)
        tta = bool(self.cfg.raw.get("TESTTIMEAUG", False))
        for i in range(0, n, batch_size):
            x = model_input(images[i : i + batch_size], self.cfg.target_size)
            p = self.model(x, training=False)
            if tta:
                # segmentation_gym's TESTTIMEAUG: average the softmax over flipped copies.
                for axes in ([1], [2], [1, 2]):
                    p += tf.reverse(self.model(tf.reverse(x, axes), training=False), axes)
                p = p / 4.0
            if (h, w) != self.cfg.target_size:
                p = tf.image.resize(p, (h, w), "bilinear")
            out[i : i + batch_size] = np.asarray(p, dtype=np.float32)
        return out

    def predict(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Class ids (uint8) for N,H,W,3 images of any size, or one H,W,3 image -> H,W."""
        images = np.asarray(images)
        single = images.ndim == 3
        if single:
            images = images[None]
        self._check(images)
        ids = np.empty(images.shape[:3], dtype=np.uint8)
        # Batch the argmax too so that large inputs never hold all probabilities at once.
        for i in range(0, len(images), batch_size):
            p = self.predict_proba(images[i : i + batch_size], batch_size)
            ids[i : i + batch_size] = p.argmax(axis=-1)
        return ids[0] if single else ids

    def predict_scene(
        self,
        image: np.ndarray,
        *,
        window: tuple[int, int] | None = None,
        overlap: float = 0.5,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Class ids H,W for one large H,W,3 image from overlapping windows.

        Windows are ``window`` pixels (default TARGET_SIZE, i.e. native resolution), each
        standardised on its own like a segmentation_gym image; their softmax scores are blended
        with weights that fall off towards window edges, where context is missing.
        """
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"expected one H,W,C image, got shape {image.shape}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        wh, ww = window or self.cfg.target_size
        h, w = image.shape[:2]
        ph, pw = max(wh - h, 0), max(ww - w, 0)
        if ph or pw:
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")
        hh, wwid = image.shape[:2]
        ys = _window_starts(hh, wh, overlap)
        xs = _window_starts(wwid, ww, overlap)
        weight = np.outer(_taper(wh), _taper(ww)).astype(np.float32)
        acc = np.zeros((hh, wwid, self.cfg.nclasses), dtype=np.float32)
        wsum = np.zeros((hh, wwid), dtype=np.float32)
        starts = [(y, x) for y in ys for x in xs]
        for i in range(0, len(starts), batch_size):
            chunk = starts[i : i + batch_size]
            batch = np.stack([image[y : y + wh, x : x + ww] for y, x in chunk])
            probs = self.predict_proba(batch, batch_size)
            for (y, x), p in zip(chunk, probs, strict=True):
                acc[y : y + wh, x : x + ww] += p * weight[..., None]
                wsum[y : y + wh, x : x + ww] += weight
        return acc[:h, :w].argmax(axis=-1).astype(np.uint8)


def _window_starts(size: int, win: int, overlap: float) -> list[int]:
    step = max(1, round(win * (1.0 - overlap)))
    starts = list(range(0, size - win + 1, step))
    if starts[-1] != size - win:
        starts.append(size - win)  # last window flush with the edge
    return starts


def _taper(n: int) -> np.ndarray:
    # Never zero, so pixels covered only by a window edge still get a prediction.
    return 0.1 + 0.9 * np.sin(np.pi * (np.arange(n) + 0.5) / n)
