"""Computing metric vectors of analysis tiles: read their chips, run the regressor on them.

Two ways, one interface (``compute(storm_name, tiles) -> Computed``):

- ``LocalComputer``: in this process (the CLI, precompute, tests, a Dask worker);
- ``ProcessComputer``: in worker processes of this machine, each with its own model, set up
  as inference processes (``iou_maps.models.runtime``) and at a lower priority. The service uses it
  so that the API process only reads the cache, takes locks and waits: a cached tile then
  costs what it costs on an idle server even while the model is saturated.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from mercantile import Tile

from iou_maps.compute.computed import Computed, Predictor, compute_reads
from iou_maps.errors import ImageryReadError
from iou_maps.models.classes import ClassSet, class_set_of_metadata
from iou_maps.models.registry import (
    load_regressor_model,
    regressor_metadata,
    truth_segmentation_dir,
)
from iou_maps.storms.chips import ChipRead, ChipReader
from iou_maps.storms.mosaic import StormBackend
from iou_maps.storms.open_storms import OpenStorms

#: How much lower than the API process the inference processes run (``os.nice``).
INFERENCE_NICENESS = 10


class LocalComputer:
    """Reads chips with ``reader`` and runs ``predictor`` on them, in this process."""

    def __init__(
        self, predictor: Predictor, storms: OpenStorms, reader: ChipReader, max_batch: int = 64
    ) -> None:
        self.predictor = predictor
        self.storms = storms
        self.reader = reader
        self.max_batch = max_batch
        self.model_calls = 0
        self.tiles_computed = 0
        self._model_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The regressor's model id (part of every cache key)."""
        return self.predictor.model_id

    @property
    def classes(self) -> ClassSet:
        """The regressor's class set."""
        return self.predictor.classes

    def infer(self, chips: np.ndarray) -> np.ndarray:
        """One regressor call on a batch (serialised: TensorFlow already uses every core)."""
        with self._model_lock:
            self.model_calls += 1
            out = np.asarray(self.predictor.predict(chips), dtype=np.float32)
        self.tiles_computed += len(chips)
        return out

    def stream(
        self, backend: StormBackend, tiles: Sequence[Tile], pool: Executor, ahead: int
    ) -> Iterator[ChipRead]:
        """Chips of ``tiles`` in order, read in ``pool`` ``ahead`` chunks ahead (bulk work)."""
        return self.reader.stream(backend, tiles, pool, ahead=ahead)

    def infer_reads(self, reads: list[ChipRead]) -> np.ndarray:
        """Metric vectors of the chips of ``reads`` (one regressor call)."""
        return self.infer(np.stack([r.chip for r in reads]))  # type: ignore[misc]

    def compute(self, storm_name: str, tiles: list[Tile]) -> Computed:
        """Read ``tiles`` in the read threads, then infer them in batches of ``max_batch``."""
        reads = self.reader.read(self.storms.get(storm_name).backend, tiles)
        return compute_reads(reads, self._infer_reads, self.max_batch)

    def _infer_reads(self, reads: list[ChipRead]) -> np.ndarray:
        return self.infer(np.stack([r.chip for r in reads if r.chip is not None]))

    def close(self) -> None:
        """Stop the read threads and close the open scene files."""
        self.reader.close()
        self.storms.close()


# --------------------------------------------------------------------------- worker processes

_worker: LocalComputer | None = None
_worker_truth: Any = None  # iou_maps.compute.truth.TruthComputer
_worker_storms: OpenStorms | None = None
_worker_args: tuple[str, str, int, int, str | None] | None = None


def _start_worker(
    data_dir: str, model: str, threads: int, niceness: int, precision: str | None = None
) -> None:
    """Pool initializer: the process's settings (the model loads with the first task, whose
    error then reaches the caller with its message)."""
    global _worker_args
    from iou_maps.models import runtime

    if niceness:
        try:
            os.nice(niceness)
        except OSError:
            pass
    runtime.inference_process(threads)
    _worker_args = (data_dir, model, threads, niceness, precision)


def _storms() -> OpenStorms:
    """The worker's open storms (shared by its regressor and its segmentation model)."""
    global _worker_storms
    if _worker_storms is None:
        from iou_maps.storms.catalog import Catalog

        assert _worker_args is not None, "not a ProcessComputer worker"
        _worker_storms = OpenStorms(Catalog(_worker_args[0]))
    return _worker_storms


def _computer() -> LocalComputer:
    global _worker
    if _worker is None:
        assert _worker_args is not None, "not a ProcessComputer worker"
        data_dir, model, _threads, _, precision = _worker_args
        regressor = load_regressor_model(Path(data_dir), model, precision)
        _worker = LocalComputer(regressor, _storms(), ChipReader())
    return _worker


def _truth_computer() -> Any:
    """The worker's true-metric computer (its segmentation model loads on first use)."""
    global _worker_truth
    if _worker_truth is None:
        from iou_maps.compute.truth import SegmentationSource, TruthComputer

        assert _worker_args is not None, "not a ProcessComputer worker"
        data_dir, model, *_ = _worker_args
        source = SegmentationSource(truth_segmentation_dir(Path(data_dir), model))
        _worker_truth = TruthComputer(source, _storms())
    return _worker_truth


def _worker_model_id() -> str:
    return _computer().model_id


def _portable(computed: Computed) -> Computed:
    # The errors travel back by their messages (which name tile, storm and scene): GDAL's
    # exceptions in their causes do not survive pickling.
    computed.failed = {t: ImageryReadError(str(e)) for t, e in computed.failed.items()}
    return computed


def _worker_compute(storm_name: str, tiles: list[Tile]) -> Computed:
    return _portable(_computer().compute(storm_name, tiles))


def _worker_truth_compute(storm_name: str, tiles: list[Tile]) -> Computed:
    return _portable(_truth_computer().compute(storm_name, tiles))


class ProcessComputer:
    """``LocalComputer``s in ``processes`` worker processes (spawned: TensorFlow is set up as
    an inference process there, whatever this process did), at ``niceness`` below this one.

    ``start()`` loads the model in the workers and returns its id; a worker that dies (out of
    memory, killed) is replaced and its work submitted once more. ``truth(model_id)``: the
    true metrics computed in the same workers (``iou_maps.compute.truth``).
    """

    def __init__(
        self,
        data_dir: Path,
        model: str,
        processes: int = 1,
        threads: int | None = None,
        niceness: int = INFERENCE_NICENESS,
        precision: str | None = None,
    ) -> None:
        from iou_maps.models import runtime

        # precision: the setting the workers choose the regressor's precision by (None: the
        # environment's, which they inherit).
        self.args = (str(data_dir), model, threads or runtime.cores(), niceness, precision)
        self.processes = processes
        self.model_id = ""
        #: The regressor's classes, from its metadata (this process loads no model).
        self.classes: ClassSet = class_set_of_metadata(regressor_metadata(data_dir, model))
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=self.args,
                )
            return self._pool

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)

    def start(self) -> str:
        """Load the model in every worker; its id (the model's errors are raised here)."""
        pool = self._executor()
        ids = {f.result() for f in [pool.submit(_worker_model_id) for _ in range(self.processes)]}
        (self.model_id,) = ids
        return self.model_id

    def submit(self, storm_name: str, tiles: list[Tile]) -> Future[Computed]:
        """``compute`` in a worker, as a future."""
        return self._executor().submit(_worker_compute, storm_name, list(tiles))

    def run(
        self, task: Callable[[str, list[Tile]], Computed], storm_name: str, tiles: list[Tile]
    ) -> Computed:
        """``task(storm_name, tiles)`` in a worker process (waiting for it; once more in a new
        worker if that one died)."""
        for attempt in (1, 2):
            pool = self._executor()
            try:
                return pool.submit(task, storm_name, list(tiles)).result()
            except BrokenProcessPool:
                self._restart(pool)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def compute(self, storm_name: str, tiles: list[Tile]) -> Computed:
        """Read and infer ``tiles`` in a worker process (waiting for it)."""
        return self.run(_worker_compute, storm_name, tiles)

    def truth(self, model_id: str) -> WorkerTruth:
        """The true metrics of the segmentation model of id ``model_id``, computed in these
        workers."""
        return WorkerTruth(self, model_id)

    def close(self) -> None:
        """Stop the worker processes."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class WorkerTruth:
    """True metric vectors computed in a ``ProcessComputer``'s workers (a ``Computer``)."""

    def __init__(self, processes: ProcessComputer, model_id: str) -> None:
        self.processes = processes
        self.model_id = model_id
        self.classes = processes.classes  # the engine checks the segmentation model's

    def compute(self, storm_name: str, tiles: list[Tile]) -> Computed:
        """Read labels and imagery of ``tiles`` and score the segmentation model, in a worker."""
        return self.processes.run(_worker_truth_compute, storm_name, tiles)

    def close(self) -> None:
        """Nothing of its own: the workers are the ``ProcessComputer``'s."""
