"""``segment``, ``retrieve`` and ``pdmtrack index ...``: personalised segmentation and retrieval of images."""

from pathlib import Path
from typing import Annotated, Any

import typer

from pdmtrack.cli.options import RERANK_HELP, with_global_options, with_track_options
from pdmtrack.config import GlobalConfig, TrackSettings

commands = typer.Typer()
index_app = typer.Typer(help="Global-descriptor indexes of image galleries (FAISS).", no_args_is_help=True, rich_markup_mode=None)


@commands.command()
@with_track_options
def segment(
    reference: Annotated[Path, typer.Argument(help="Reference image showing the instance(s).")],
    targets: Annotated[list[Path], typer.Argument(help="Target images or folders of images.")],
    mask: Annotated[Path | None, typer.Option(help="Reference mask: palette/grey/RGB PNG or COCO RLE JSON (ids kept).")] = None,
    classes: Annotated[list[str] | None, typer.Option("--cls", help="Class name; once for all objects or once per object.")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("pdmtrack_out/segment"),
    presence_threshold: Annotated[
        float,
        typer.Option(
            "--present-threshold", help="Presence score (target peak / reference self-similarity) below which an object is absent."
        ),
    ] = 0.5,
    resize_mask: Annotated[bool, typer.Option("--resize-mask", help="Resize a mask of another size (nearest neighbour).")] = False,
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Write <target>_overlay.jpg.")] = True,
    settings: TrackSettings = TrackSettings(),
) -> None:
    """Segment the reference's instance(s) in each target image (PerSAM(PDM))."""
    from pdmtrack.runs.image_folder import segment_to_folder

    summary = segment_to_folder(
        reference,
        targets,
        out,
        mask=mask,
        classes=list(classes or []),
        settings=settings,
        presence_threshold=presence_threshold,
        overlay=overlay,
        resize_mask=resize_mask,
    )
    _echo_summary(summary, "masks and scores.json")


@commands.command()
@with_track_options
@with_global_options
def retrieve(
    query: Annotated[Path, typer.Argument(help="Query image showing the instance.")],
    gallery: Annotated[Path, typer.Option(help="Folder of images, or an index folder from `pdmtrack index build`.")],
    mask: Annotated[Path | None, typer.Option(help="Query instance mask (all objects in it form the instance).")] = None,
    classes: Annotated[str | None, typer.Option("--cls", help="Class name of the instance.")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("pdmtrack_out/retrieve"),
    rerank: Annotated[int | None, typer.Option(help=RERANK_HELP + " An index gallery defaults to 100.")] = None,
    top: Annotated[int, typer.Option(help="Results shown on the contact sheet.")] = 8,
    resize_mask: Annotated[bool, typer.Option("--resize-mask", help="Resize a mask of another size (nearest neighbour).")] = False,
    global_config: GlobalConfig = GlobalConfig(),
    settings: TrackSettings = TrackSettings(),
) -> None:
    """Rank gallery images by how well they show the query's instance (PDM)."""
    from pdmtrack.runs.image_folder import retrieve_to_folder

    summary = retrieve_to_folder(
        query,
        gallery,
        out,
        mask=mask,
        classes=[classes] if classes else [],
        settings=settings,
        rerank=rerank,
        global_config=global_config,
        top=top,
        resize_mask=resize_mask,
    )
    _echo_summary(summary, "ranking.csv and contact_sheet.png")


def _echo_summary(summary: Any, what: str) -> None:
    for note in summary.notes:
        typer.echo(note, err=True)
    typer.echo(
        f"{summary.images} images in {summary.seconds:.1f} s; features of {summary.cache_hits} images from the cache, "
        f"{summary.cache_misses} computed; {what} in {summary.out_dir}"
    )


@index_app.command("build")
@with_global_options
def index_build(
    images: Annotated[list[Path], typer.Argument(help="Image folders (searched recursively) or files.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Index folder to write.")],
    device: Annotated[str, typer.Option(help="auto | cuda | cpu.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing index.")] = False,
    kind: Annotated[str, typer.Option("--index-type", help="hnsw (approximate, fast) | flat (exact scan).")] = "hnsw",
    global_config: GlobalConfig = GlobalConfig(),
) -> None:
    """Compute a global descriptor per image into a FAISS index with a manifest."""
    from pdmtrack.personal.index import build_index

    summary = build_index(images, out, global_config, device=device, overwrite=overwrite, kind=kind)
    typer.echo(summary.format(out))


@index_app.command("add")
def index_add(
    index: Annotated[Path, typer.Argument(help="Index folder from `pdmtrack index build`.")],
    images: Annotated[list[Path], typer.Argument(help="Image folders or files to add (known content is skipped).")],
    device: Annotated[str, typer.Option(help="auto | cuda | cpu.")] = "auto",
) -> None:
    """Append images to an index, with the index's own descriptor model."""
    from pdmtrack.personal.index import add_to_index

    typer.echo(add_to_index(index, images, device=device).format(index))
