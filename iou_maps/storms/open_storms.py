"""The storms of a catalog kept open, each with its mosaic backends (``mosaic.StormBackend``).

A storm is loaded once and reloaded when a re-ingest replaces its footprints file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from iou_maps.storms.catalog import Catalog, Storm
from iou_maps.storms.mosaic import StormBackend
from iou_maps.storms.scenes import OpenScenes


@dataclass(frozen=True)
class LoadedStorm:
    """A storm and the mosaic backends of its scenes (and of its labels, None without any),
    as loaded from its footprints file."""

    storm: Storm
    backend: StormBackend
    footprints_path: str
    mtime: float
    labels: StormBackend | None = None


class OpenStorms:
    """The storms of a catalog with their mosaic backends, each reloaded when its footprints
    file changes (a re-ingest). A known storm costs one stat of that file."""

    def __init__(self, catalog: Catalog, scenes: OpenScenes | None = None) -> None:
        self.catalog = catalog
        self.scenes = scenes if scenes is not None else OpenScenes()
        self._loaded: dict[str, LoadedStorm] = {}

    def get(self, storm_name: str) -> LoadedStorm:
        """The storm named ``storm_name`` (the catalog validates the name before any disk
        access: InvalidStormName, StormNotFound)."""
        loaded = self._loaded.get(storm_name)
        if loaded is not None:
            try:
                if os.stat(loaded.footprints_path).st_mtime == loaded.mtime:
                    return loaded
            except OSError:
                pass  # removed: the catalog says what is wrong
        storm = self.catalog.storm(storm_name)
        path = str(storm.footprints_path)
        labels = StormBackend(storm, labels=True, scenes=self.scenes) if storm.has_labels else None
        loaded = LoadedStorm(
            storm, StormBackend(storm, scenes=self.scenes), path, os.stat(path).st_mtime, labels
        )
        self._loaded[storm_name] = loaded
        return loaded

    def close(self) -> None:
        """Close the open scene files."""
        self.scenes.close()
