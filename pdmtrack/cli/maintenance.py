"""``build-permis`` and ``pdmtrack cache ...``: building benchmarks, looking after the feature cache."""

from pathlib import Path
from typing import Annotated, Any

import typer

from pdmtrack.cli.options import split_list

commands = typer.Typer()
cache_app = typer.Typer(help="Inspect or clear the feature cache.", no_args_is_help=True, rich_markup_mode=None)
CACHE_DIR_OPTION = Annotated[Path | None, typer.Option(help="Feature cache folder (default: $PDMTRACK_CACHE_DIR, else the user cache).")]


@commands.command("build-permis")
def build_permis(
    burst: Annotated[Path, typer.Option(help="BURST root (annotations/, frames/).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("PerMIRS"),
    splits: Annotated[str | None, typer.Option(help="Comma-separated BURST splits (default: those of train,val,test present).")] = None,
    annotations: Annotated[
        list[Path] | None, typer.Option(help="Annotation JSON instead of annotations/<split>/all_classes.json (repeatable).")
    ] = None,
    drop_sources: Annotated[
        str | None, typer.Option(help="Comma-separated source datasets to leave out (default: HACS,AVA,LaSOT; '' keeps all).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
) -> None:
    """Build the PerMIR/PerMIS benchmarks from BURST."""
    from pdmtrack.burst import build_permirs

    kwargs: dict[str, Any] = {}
    if drop_sources is not None:
        kwargs["drop_sources"] = split_list(drop_sources)
    summary = build_permirs(burst, out, splits=split_list(splits), annotations=annotations or None, overwrite=overwrite, **kwargs)
    typer.echo(summary.format())


@cache_app.command("info")
def cache_info(
    cache_dir: CACHE_DIR_OPTION = None,
    cache_max_gb: Annotated[float | None, typer.Option(help="Bound to report against (default: $PDMTRACK_CACHE_MAX_GB, else 20).")] = None,
) -> None:
    """Size, entries and bound of the feature cache, per model fingerprint."""
    from pdmtrack.features.cache_folder import CacheFolder, resolve_max_bytes

    typer.echo(CacheFolder(cache_dir, resolve_max_bytes(cache_max_gb)).report().format())


@cache_app.command("clear")
def cache_clear(
    cache_dir: CACHE_DIR_OPTION = None,
    model: Annotated[str | None, typer.Option(help="Only entries written with this --model (hub id or local folder).")] = None,
    older_than_days: Annotated[float | None, typer.Option("--older-than", help="Only entries not used for this many days.")] = None,
) -> None:
    """Delete feature cache entries (all of them without --model / --older-than)."""
    from pdmtrack.features.cache_folder import CacheFolder, resolve_max_bytes

    folder = CacheFolder(cache_dir, resolve_max_bytes(None))
    removed, freed = folder.clear(model, older_than_days)
    typer.echo(f"removed {removed} entries ({freed / 1e9:.3f} GB) from {folder.root}")
