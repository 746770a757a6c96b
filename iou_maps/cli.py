"""The ``iou-maps`` command line (Typer + Rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from iou_maps.catalog import Catalog, InvalidStormName, StormNotFound, ingest, validate_storm_name
from iou_maps.config import Settings

app = typer.Typer(
    help="IoU Maps: where a segmentation model of post-storm imagery can be trusted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $IOU_MAPS_DATA_DIR or ./data)."),
]


def settings(data_dir: Path | None = None) -> Settings:
    s = Settings()
    if data_dir is not None:
        s.data_dir = data_dir
    return s


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def storm_name(value: str) -> str:
    try:
        return validate_storm_name(value)
    except InvalidStormName as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def synth(
    storm: Annotated[str, typer.Argument(help="Storm name.", callback=storm_name)],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    scenes: Annotated[int, typer.Option(min=1, help="Number of scenes.")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same storm).")] = 0,
    fmt: Annotated[
        str, typer.Option("--format", help="geotiff | jpeg (+ world file) | noaa-jpg (+ CSV).")
    ] = "geotiff",
    size: Annotated[int, typer.Option(min=256, help="Scene width/height in pixels.")] = 1536,
    tar: Annotated[bool, typer.Option("--tar", help="Pack each flight into a .tar.")] = False,
) -> None:
    """Generate a synthetic NOAA-like post-hurricane storm (scenes + label rasters)."""
    from iou_maps.synthetic import FORMATS, generate_storm

    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    with progress_bar() as bar:
        task = bar.add_task(f"synth {storm}", total=scenes, rate="")
        result = generate_storm(
            storm, out_dir, scenes=scenes, seed=seed, fmt=fmt, size=size, tar=tar,
            progress=lambda n: bar.advance(task, n),
        )  # fmt: skip
    out.print(f"wrote {len(result.scenes)} scenes of storm {storm!r} to {out_dir}")


@app.command("ingest")
def ingest_cmd(
    storm: Annotated[str, typer.Argument(help="Storm name.", callback=storm_name)],
    paths: Annotated[list[Path], typer.Argument(help="Folders, files or .tar archives.")],
    data_dir: DataDir = None,
) -> None:
    """Ingest GeoTIFFs, JPEG+world files or JPEGs+corner CSV into COGs and a footprints index."""
    s = settings(data_dir)
    with progress_bar() as bar:
        task = bar.add_task(f"ingest {storm}", total=None, rate="")
        report = ingest(
            s.data_dir, storm, paths,
            on_total=lambda n: bar.update(task, total=n),
            on_scene=lambda _id, _status: bar.advance(task),
        )  # fmt: skip
    for skipped in report.skipped:
        console.print(f"[yellow]skipped[/yellow] {skipped.path}: {skipped.reason}")
    out.print(
        f"storm {storm!r}: {len(report.ingested)} ingested, {len(report.unchanged)} unchanged, "
        f"{len(report.skipped)} skipped"
    )
    if not report.ingested and not report.unchanged:
        raise fail("nothing was ingested", 1)


@app.command()
def storms(data_dir: DataDir = None) -> None:
    """List the ingested storms."""
    s = settings(data_dir)
    summary = Catalog(s.data_dir).summary()
    if summary.empty:
        out.print(f"no storms under {s.storms_dir}")
        return
    table = Table(title=f"storms in {s.storms_dir}")
    for col in summary.columns:
        table.add_column(col)
    for row in summary.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    out.print(table)


def _storm_or_exit(catalog: Catalog, name: str):
    try:
        return catalog.storm(name)
    except StormNotFound as exc:
        raise fail(str(exc)) from None


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # python -m iou_maps.cli
    app()
