"""``export``: a finished output folder's masks in another tool's format."""

from pathlib import Path
from typing import Annotated

import typer

commands = typer.Typer()


@commands.command()
def export(
    out_dir: Annotated[Path, typer.Argument(help="Output folder of propagate (its run.json and mask PNGs).")],
    format: Annotated[str, typer.Option("--format", help="youtube-vis | coco | mots-txt | mots-png | cvat-video | binary | cutout.")],
    target: Annotated[
        Path | None, typer.Option("-o", "--out", help="File or folder to write (default: OUT_DIR/exports/<format's name>).")
    ] = None,
    matte: Annotated[bool, typer.Option("--matte", help="cutout: also <object id>.mp4, the object's mask as a grey video.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing target (a folder only if pdmtrack exported it).")
    ] = False,
) -> None:
    """Write a finished run's masks for another tool: YouTube-VIS, COCO, MOTS, CVAT video, per-object masks, cut-outs."""
    from pdmtrack.runs.export_folder import export as export_run

    written = export_run(out_dir, format, target, overwrite=overwrite, matte=matte)
    typer.echo(f"{format} export of {out_dir} in {written}")
