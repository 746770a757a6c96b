"""True metrics of analysis tiles: the segmentation model scored against a storm's labels.

The numbers ``evaluate`` writes to its table (``evaluation.read_chip`` and
``evaluation.true_metrics``: the same reads, the same rule), per analysis tile, for the maps:
computed on demand through the engine's single flight like predicted values, or in bulk by
``precompute --source true``. A tile without enough labelled imagery has no true value (the
cache holds the "no value here" marker for it).

Cache keys: true values depend on the segmentation model, the labels and the rule, not on the
regressor, so they are keyed by the segmentation model's id (``segmentation_id``: a hash of its
files and of the rule), in their own key space (``TRUE_NAMESPACE``). A regressor trained again
on the same segmentation model keeps every true value already computed (they cost a full UNet
run a tile, as predictions do). The error layer's aggregates depend on both models: they are
keyed by both ids (``error_id``, ``ERROR_NAMESPACE``).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from mercantile import Tile

from iou_maps.compute.computed import Computed, compute_reads
from iou_maps.errors import NoLabels
from iou_maps.models.classes import ClassSet
from iou_maps.models.evaluation import MIN_LABELLED_FRACTION, read_chip, true_metrics
from iou_maps.models.gym_files import CLASSES_FILE, model_classes
from iou_maps.storms.chips import ChipRead, read_error
from iou_maps.storms.mosaic import StormBackend
from iou_maps.storms.open_storms import OpenStorms

#: Key space of the true metrics (keyed by the segmentation model's id).
TRUE_NAMESPACE = "iou-true"
#: Key space of the error layer's aggregates (keyed by both models' ids).
ERROR_NAMESPACE = "iou-error"
#: Chips per segmentation call (as ``SegmentationModel.predict`` batches them).
TRUTH_BATCH = 16
#: What the true values are (part of the segmentation id: a change invalidates them).
TRUTH_RULE = f"evaluate chips, labelled >= {MIN_LABELLED_FRACTION}, metrics v1"


def segmentation_id(directory: Path) -> str:
    """12 hex digits of SHA-256 over a segmentation model's files (config and weights, by
    name) and ``TRUTH_RULE``: the id of its true values, read without loading the model."""
    h = hashlib.sha256(TRUTH_RULE.encode())
    files = sorted(
        p
        for p in Path(directory).iterdir()
        if p.suffix in (".json", ".h5") or p.name == CLASSES_FILE
    )
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def error_id(model_id: str, truth_id: str) -> str:
    """The id of error values: the regressor's and the segmentation model's."""
    return f"{model_id}+{truth_id}"


class SegmentationSource:
    """A segmentation model on disk: its id now, the model itself on first use (TensorFlow
    is imported then, in the process that computes)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.model_id = segmentation_id(self.directory)
        #: Its classes, from its config (and classes.txt): read without TensorFlow.
        self.classes: ClassSet = model_classes(self.directory)
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        """The ``SegmentationModel`` (loaded once)."""
        with self._lock:
            if self._model is None:
                from iou_maps.models.segmentation.files import load_segmentation

                self._model = load_segmentation(self.directory)
            return self._model


class TruthComputer:
    """Computes true metric vectors of analysis tiles in this process: reads chips and labels
    as ``evaluate`` does (``read_threads`` at a time), scores the segmentation model on them.

    Implements the ``Computer`` protocol (``compute``) and what precompute's ``fill`` drives
    (``stream``, ``infer_reads``).
    """

    def __init__(
        self,
        source: SegmentationSource,
        storms: OpenStorms,
        read_threads: int = 4,
        max_batch: int = TRUTH_BATCH,
    ) -> None:
        self.source = source
        self.storms = storms
        self.max_batch = max_batch
        self.model_calls = 0
        self.tiles_computed = 0
        self._pool = ThreadPoolExecutor(read_threads, thread_name_prefix="labels")
        self._threads = read_threads
        self._model_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The segmentation model's id (part of every true value's key)."""
        return str(self.source.model_id)

    @property
    def classes(self) -> ClassSet:
        """The segmentation model's class set."""
        return self.source.classes

    # ------------------------------------------------------------------ reading

    def _labels(self, backend: StormBackend) -> StormBackend:
        labels = self.storms.get(backend.input.name).labels
        if labels is None:
            raise NoLabels(f"storm {backend.input.name!r} has no label rasters")
        return labels

    def _read(
        self, images: StormBackend, labels: StormBackend, tiles: list[Tile]
    ) -> list[ChipRead]:
        out = []
        for tile in tiles:
            try:
                got = read_chip(images, labels, tile, self.source.classes.nclasses)
            except Exception as exc:  # rasterio/rio-tiler raise many types for a bad file
                out.append(ChipRead(tile, error=read_error(images, tile, exc)))
                continue
            out.append(ChipRead(tile) if got is None else ChipRead(tile, got[0], label=got[1]))
        return out

    def stream(
        self,
        backend: StormBackend,
        tiles: Sequence[Tile],
        pool: Executor | None = None,
        ahead: int = 4,
        chunk: int = 8,
    ) -> Iterator[ChipRead]:
        """Labelled chips of ``tiles`` in order (``chip`` None: no true value there), read in
        chunks in ``pool`` (default: this computer's threads), ``ahead`` chunks ahead."""
        labels = self._labels(backend)
        pool = pool or self._pool
        parts = deque(list(tiles)[i : i + chunk] for i in range(0, len(tiles), chunk))
        pending: deque[Future[list[ChipRead]]] = deque()
        while parts or pending:
            while parts and len(pending) < ahead:
                pending.append(pool.submit(self._read, backend, labels, parts.popleft()))
            yield from pending.popleft().result()

    # ------------------------------------------------------------------ computing

    def infer_reads(self, reads: list[ChipRead]) -> np.ndarray:
        """True metric vectors (N, C + 2) of labelled chips (one model call, serialised)."""
        images = np.stack([r.chip for r in reads])  # type: ignore[misc]
        labels = np.stack([r.label for r in reads])  # type: ignore[misc]
        model = self.source.load()
        with self._model_lock:
            self.model_calls += 1
            vectors, _ = true_metrics(images, labels, model.predict, model.cfg.nclasses)
        self.tiles_computed += len(reads)
        return vectors

    def compute(self, storm_name: str, tiles: list[Tile]) -> Computed:
        """Read and score ``tiles``; read failures are returned, not raised."""
        backend = self.storms.get(storm_name).backend
        chunk = max(1, math.ceil(len(tiles) / self._threads))
        reads = self.stream(backend, tiles, chunk=chunk, ahead=self._threads)
        return compute_reads(reads, self.infer_reads, self.max_batch)

    def close(self) -> None:
        """Stop the read threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
