"""``annotate``: the local web app to click objects, track them, fix drift and export."""

from pathlib import Path
from typing import Annotated

import typer

from pdmtrack.cli.options import with_track_options
from pdmtrack.config import TrackSettings

commands = typer.Typer()


@commands.command()
@with_track_options
def annotate(
    video: Annotated[Path | None, typer.Argument(help="Video file or folder of frames (leave out to reopen a --project).")] = None,
    project: Annotated[
        Path | None, typer.Option("--project", help="Project folder (default: ./pdmtrack_annotate/<video name>); reopened when it exists.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the address only; do not open a browser.")] = False,
    settings: TrackSettings = TrackSettings(),
) -> None:
    """Annotate a video in the browser: click objects, track, correct, export."""
    from pdmtrack.annotate.app import serve

    serve(video, project, settings, host=host, port=port, open_browser=not no_browser)
