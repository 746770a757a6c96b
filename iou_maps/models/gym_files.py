"""A segmentation_gym model folder, read without TensorFlow: which files are its config and
weights, and its class set (``NCLASSES``, ``MY_CLASS_NAMES``, a ``classes.txt`` beside it).

The service and the cache keys need a model's classes in processes that never load the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iou_maps.errors import BadClassSet, ConfigError, ModelFilesMissing
from iou_maps.models.classes import DEMO_CLASSES, ClassSet

CONFIG_FILE = "config.json"
#: Doodler's and segmentation_gym's list of class names, one a line, beside the config.
CLASSES_FILE = "classes.txt"


def class_set_of(
    nclasses: int, my_class_names: Any = None, class_names: Sequence[str] | None = None
) -> ClassSet:
    """The classes of a model of ``nclasses``: ``class_names`` (a classes.txt), else
    ``MY_CLASS_NAMES`` (a list, or segmentation_gym's {id: name} mapping), else the demo's
    four for a 4-class model (this project's convention before class sets, which its models'
    configs do not name), else ``class0…``. BadClassSet if the names do not fit."""
    if class_names is not None:
        return ClassSet.of(class_names, nclasses, CLASSES_FILE)
    if isinstance(my_class_names, Mapping) and my_class_names:
        keys = list(my_class_names)
        order = sorted(keys, key=int) if all(str(k).isdigit() for k in keys) else keys
        return ClassSet.of([str(my_class_names[k]) for k in order], nclasses, "MY_CLASS_NAMES")
    if isinstance(my_class_names, list | tuple) and my_class_names:
        return ClassSet.of([str(n) for n in my_class_names], nclasses, "MY_CLASS_NAMES")
    if nclasses == DEMO_CLASSES.nclasses:
        return DEMO_CLASSES
    return ClassSet.generic(nclasses)


def find_model_files(directory: Path) -> tuple[Path, Path]:
    """Config and weights of a model directory: ours, or a Zoo download (<stem>.json + .h5)."""
    if not directory.is_dir():
        raise ModelFilesMissing(f"segmentation model directory not found: {directory}")
    config = directory / CONFIG_FILE
    if not config.is_file():
        jsons = sorted(directory.glob("*.json"))
        if len(jsons) != 1:
            raise ModelFilesMissing(
                f"{directory} needs {CONFIG_FILE} (or exactly one .json config); "
                f"found {[p.name for p in jsons]}"
            )
        config = jsons[0]
    stem = config.stem
    for name in (f"{stem}_fullmodel.h5", f"{stem}.h5", f"{stem}.weights.h5"):
        if (directory / name).is_file():
            return config, directory / name
    h5s = sorted(directory.glob("*.h5"))
    if len(h5s) == 1:
        return config, h5s[0]
    raise ModelFilesMissing(
        f"{directory} has config {config.name} but no weights {stem}_fullmodel.h5 "
        f"(.h5 files found: {[p.name for p in h5s]})"
    )


def class_names_beside(config: Path) -> list[str] | None:
    """The names of the ``classes.txt`` beside a config file, None if there is none."""
    path = Path(config).parent / CLASSES_FILE
    return path.read_text(encoding="utf-8").split() if path.is_file() else None


def write_class_names(directory: str | Path, names: Sequence[str]) -> None:
    """Write ``classes.txt`` (one name a line) into a segmentation model folder."""
    (Path(directory) / CLASSES_FILE).write_text("\n".join(names) + "\n", encoding="utf-8")


def model_classes(directory: Path) -> ClassSet:
    """The class set of the segmentation model in ``directory`` (``class_set_of`` its config);
    BadClassSet naming the file if its names do not fit."""
    config, _ = find_model_files(Path(directory))
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config} is not valid JSON: {e}") from None
    n = raw.get("NCLASSES") if isinstance(raw, Mapping) else None
    if isinstance(n, bool) or not isinstance(n, int):
        raise ConfigError(f"{config}: NCLASSES must be an integer, got {n!r}")
    try:
        return class_set_of(n, raw.get("MY_CLASS_NAMES"), class_names_beside(config))
    except BadClassSet as exc:
        raise BadClassSet(f"{config}: {exc}") from None
