"""``segment-ov`` and ``pdmtrack prototypes ...``: open-vocabulary segmentation (OVDiff)."""

from pathlib import Path
from typing import Annotated

import typer

from pdmtrack.cli.options import (
    PrototypesDir,
    pdm_features_only,
    split_list,
    with_prototype_options,
    with_segment_options,
    with_track_options,
)
from pdmtrack.config import TrackSettings
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig

commands = typer.Typer()
prototypes_app = typer.Typer(help="OVDiff class prototypes from generated support images.", no_args_is_help=True, rich_markup_mode=None)
SupportDir = Annotated[Path | None, typer.Option(help="Also write the support images and their masks here (classes built in this run).")]
Classes = Annotated[str, typer.Option(help="Comma-separated class names (ids 1.. in this order).")]


@commands.command("segment-ov")
@with_track_options
@with_prototype_options
@with_segment_options
def segment_ov(
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG/PNG).")],
    classes: Classes,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("pdmtrack_ov"),
    prototypes_dir: PrototypesDir = None,
    support_dir: SupportDir = None,
    settings: TrackSettings = TrackSettings(),
    prototype_config: PrototypeConfig = PrototypeConfig(),
    segment_config: SegmentConfig = SegmentConfig(),
) -> None:
    """Open-vocabulary segmentation (OVDiff): palette PNGs of class ids, overlays, legend.json."""
    pdm_features_only(settings)
    from pdmtrack.runs.ovdiff_folder import segment_images

    summary = segment_images(
        images,
        out,
        split_list(classes) or [],
        settings=settings,
        prototypes=prototype_config,
        segment=segment_config,
        prototypes_dir=prototypes_dir,
        support_dir=support_dir,
    )
    built = summary.build.built
    typer.echo(
        f"{summary.images} image(s) in {summary.segment_seconds:.1f} s ({summary.images_per_second:.2f} images/s); "
        f"prototypes built: {', '.join(built) if built else 'none (all stored)'}; masks in {summary.out_dir}"
    )


@prototypes_app.command("build")
@with_track_options
@with_prototype_options
def prototypes_build(
    classes: Classes,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Prototype folder (default: one per model in the user cache).")] = None,
    support_dir: SupportDir = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build again even when stored.")] = False,
    settings: TrackSettings = TrackSettings(),
    prototype_config: PrototypeConfig = PrototypeConfig(),
) -> None:
    """Sample support images per class and store its prototypes (stored ones are reused)."""
    pdm_features_only(settings)
    from pdmtrack.ovdiff.pipeline import build_prototypes

    builder = build_prototypes(split_list(classes) or [], settings, prototype_config, out, support_dir, rebuild)
    report = builder.report
    for name in report.loaded:
        typer.echo(f"{name}: stored")
    for name in report.built:
        typer.echo(f"{name}: built in {report.class_seconds[name]:.1f} s")
    if report.support_images:
        rate = report.support_images / max(report.sampling_seconds, 1e-9)
        typer.echo(f"{report.support_images} support images sampled in {report.sampling_seconds:.1f} s ({rate:.2f} images/s)")
    typer.echo(f"prototypes in {builder.store.root}")
