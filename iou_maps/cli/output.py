"""What every command of the command line shares: settings, the consoles, progress bars,
JSON and table output, errors and the common options and argument checks."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from iou_maps.config import Settings
from iou_maps.errors import InvalidStormName, StormNotFound
from iou_maps.storms.catalog import Catalog, Storm, validate_storm_name

console = Console(stderr=True)
# Lines are never wrapped at the console's width: piped into grep or a file they stay whole.
out = Console(soft_wrap=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $IOU_MAPS_DATA_DIR or ./data)."),
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print JSON (for scripts) instead of a table.")
]


def settings(data_dir: Path | None = None) -> Settings:
    """The settings from the environment, with the ``--data-dir`` option's folder if given."""
    s = Settings()
    if data_dir is not None:
        s.data_dir = data_dir
    return s


def progress_bar() -> Progress:
    """A Rich progress bar on stderr (stdout stays for results)."""
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


def rich_progress(bar: Progress) -> Callable[[str, int | None], Callable[[int], None]]:
    """A pipeline Progress factory drawing one Rich task per step."""

    def factory(description: str, total: int | None) -> Callable[[int], None]:
        task = bar.add_task(description, total=total, rate="")
        return lambda n: bar.advance(task, n)

    return factory


def draw_progress(bar: Progress, task: TaskID, done: int, total: int) -> None:
    """Move ``bar``'s ``task`` to ``done`` of ``total``."""
    bar.update(task, completed=done, total=total)


def _plain(value: Any) -> Any:
    """``value`` as JSON has it: numpy scalars as numbers, NaN as null, nested alike."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (NaN as null)."""
    sys.stdout.write(json.dumps(_plain(data), indent=2) + "\n")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""
    return f"{value:.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    header: bool = True,
) -> None:
    """A Rich table on a terminal; otherwise tab-separated lines (the header line first)
    with every value whole, for scripts: Rich would cut them to 80 columns."""
    if out.is_terminal:
        table = Table(title=title, show_header=header)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        out.print(table)
        return
    lines = (["\t".join(columns)] if header else []) + [
        "\t".join(_cell(v) for v in row) for row in rows
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error and return the Exit to raise (status ``code``)."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def storm_name(value: str) -> str:
    """Typer callback: the storm name, or a usage error naming the rule."""
    try:
        return validate_storm_name(value)
    except InvalidStormName as exc:
        raise typer.BadParameter(str(exc)) from None


def storm_or_exit(catalog: Catalog, name: str) -> Storm:
    """The ingested storm ``name``, or the error printed and exit status 2."""
    try:
        return catalog.storm(name)
    except StormNotFound as exc:
        raise fail(str(exc)) from None
