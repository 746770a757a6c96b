"""Finding the scenes among ingest inputs: folders, files and tar archives.

A scene is an image (GeoTIFF, JPEG with a world file, or plain JPEG), with its label raster
(``<scene_id>_label.<ext>`` beside it) and, for a plain JPEG, its four corner coordinates from a
NOAA-style catalogue CSV among the inputs. Nothing is read but file names and CSVs here;
``georeference.py`` reads the pixels.
"""

from __future__ import annotations

import csv
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SCENE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
CORNER_COLUMNS = (
    "ul_lat", "ul_lon", "ur_lat", "ur_lon", "lr_lat", "lr_lon", "ll_lat", "ll_lon",
)  # fmt: skip
IMAGE_SUFFIXES = {".tif", ".tiff", ".jpg", ".jpeg"}
LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".jpg")


@dataclass
class SourceScene:
    """One scene found among the ingest inputs, before conversion."""

    scene_id: str
    image: Path
    label: Path | None = None
    corners: dict[str, float] | None = None
    datetime: str | None = None


@dataclass
class Skipped:
    """A source file that ingest left out, and why."""

    path: str
    reason: str


def _label_for(image: Path) -> Path | None:
    for suffix in LABEL_SUFFIXES:
        candidate = image.with_name(f"{image.stem}_label{suffix}")
        if candidate.is_file():
            return candidate
    return None


def _is_label(path: Path) -> bool:
    return path.stem.endswith("_label")


def _read_corner_csvs(csvs: Iterable[Path]) -> dict[str, dict[str, str]]:
    """Rows of NOAA-style image catalogues, by image file name."""
    rows: dict[str, dict[str, str]] = {}
    for path in csvs:
        try:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or not set(CORNER_COLUMNS) <= set(reader.fieldnames):
                    continue
                file_col = next(
                    (c for c in ("file", "image", "filename", "name") if c in reader.fieldnames),
                    None,
                )
                if file_col is None:
                    continue
                for row in reader:
                    rows[Path(row[file_col]).name] = row
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
    return rows


def _extract_tar(archive: Path, into: Path) -> Path:
    dest = into / re.sub(r"[^A-Za-z0-9_.-]", "_", archive.stem)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        # The "data" filter refuses absolute names, '..' and links out of the folder.
        tar.extractall(dest, filter="data")
    return dest


def discover(paths: Sequence[Path | str], workdir: Path) -> tuple[list[SourceScene], list[Skipped]]:
    """Scenes among ``paths`` (folders, files, tars), matched with labels and corner CSVs."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            skipped.append(Skipped(str(path), "no such file or folder"))
            continue
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in candidates:
            if f.suffix.lower() == ".tar" or f.name.lower().endswith((".tar.gz", ".tgz")):
                try:
                    extracted = _extract_tar(f, workdir)
                except (tarfile.TarError, OSError) as exc:
                    skipped.append(Skipped(str(f), f"unreadable tar archive: {exc}"))
                    continue
                files.extend(sorted(p for p in extracted.rglob("*") if p.is_file()))
            else:
                files.append(f)
    corner_rows = _read_corner_csvs(f for f in files if f.suffix.lower() == ".csv")
    scenes: dict[str, SourceScene] = {}
    for f in files:
        if f.suffix.lower() not in IMAGE_SUFFIXES or _is_label(f):
            continue
        scene_id = f.stem
        if not SCENE_ID_RE.fullmatch(scene_id):
            skipped.append(Skipped(str(f), "file name is not a usable scene id"))
            continue
        if scene_id in scenes:
            skipped.append(Skipped(str(f), f"duplicate scene id {scene_id!r}"))
            continue
        row = corner_rows.get(f.name)
        corners = None
        when = None
        if row is not None:
            try:
                corners = {c: float(row[c]) for c in CORNER_COLUMNS}
            except (TypeError, ValueError):
                skipped.append(Skipped(str(f), "catalogue CSV row has non-numeric corners"))
                continue
            when = row.get("datetime") or None
        scenes[scene_id] = SourceScene(scene_id, f, _label_for(f), corners, when)
    return list(scenes.values()), skipped
