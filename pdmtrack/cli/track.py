"""``propagate`` and ``propagate-batch``: tracking videos."""

from pathlib import Path
from typing import Annotated

import typer

from pdmtrack.cli.options import RAY_ADDRESS_OPTION, WORKERS_OPTION, with_prototype_options, with_segment_options, with_track_options
from pdmtrack.config import TrackSettings, check_choice
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig

commands = typer.Typer()


@commands.command()
@with_track_options
@with_prototype_options
@with_segment_options
def propagate(
    video: Annotated[Path, typer.Argument(help="Video file (mp4/mov/avi/mkv/webm) or folder of frames.")],
    masks: Annotated[
        list[str] | None,
        typer.Option(
            "--mask",
            help="Mask: FILE (frame --start) or FRAME:FILE, repeatable (corrections, new objects). Palette/grey/RGB PNG or COCO RLE JSON.",
        ),
    ] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option("--prompts", help="Clicks and boxes: a JSON list of {frame, obj_id, points, labels, box, cls} entries (needs --sam)."),
    ] = None,
    point: Annotated[
        list[str] | None,
        typer.Option("--point", help="A click FRAME:OBJ:X,Y (positive) or FRAME:OBJ:X,Y:neg, repeatable; mixes with --mask."),
    ] = None,
    box: Annotated[
        list[str] | None, typer.Option("--box", help="A box FRAME:OBJ:X0,Y0,X1,Y1 in pixels, repeatable; with --point clicks of it.")
    ] = None,
    classes: Annotated[
        list[str] | None, typer.Option("--cls", help="Class name; once for all objects or once per object in id order.")
    ] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output folder (default: ./pdmtrack_out/<video name>).")] = None,
    start: Annotated[int | None, typer.Option(help="First frame written (default: the first mask's frame; 0 for backward/both).")] = None,
    end: Annotated[int | None, typer.Option(help="Stop before this frame (default: the last).")] = None,
    direction: Annotated[str, typer.Option(help="forward | backward | both (from the given masks).")] = "forward",
    resize_mask: Annotated[bool, typer.Option("--resize-mask", help="Resize a mask of another size (nearest neighbour).")] = False,
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Write overlay.mp4.")] = True,
    png: Annotated[bool, typer.Option("--png/--no-png", help="Write one indexed PNG per frame.")] = True,
    rle: Annotated[bool, typer.Option("--rle", help="Write masks.json (COCO RLE).")] = False,
    exports: Annotated[
        list[str] | None,
        typer.Option(
            "--export", help="Also write this export into -o's exports/ while tracking (repeatable; formats: pdmtrack export --help)."
        ),
    ] = None,
    init: Annotated[
        str,
        typer.Option(
            help="Without --mask, the first-frame objects from: attention (the class token's cross-attention) | ovdiff (OVDiff segmentation, one object per connected region)."
        ),
    ] = "attention",
    prototypes_dir: Annotated[
        Path | None,
        typer.Option("--prototypes", help="OVDiff prototype folder for --init ovdiff (default: one per model in the user cache)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace another run's outputs in -o (a folder holds one run's outputs).")
    ] = False,
    settings: TrackSettings = TrackSettings(),
    prototype_config: PrototypeConfig = PrototypeConfig(),
    segment_config: SegmentConfig = SegmentConfig(),
) -> None:
    """Track the instances of given masks, clicks and boxes (or of a class name) through a video."""
    from pdmtrack.io.prompt_files import prompts_from_flags, read_prompts
    from pdmtrack.runs.video_folder import mask_files, plan_video, track_to_folder
    from pdmtrack.tracking.tracker import Tracker

    check_choice("init", init, ("attention", "ovdiff"))
    prompts = read_prompts(prompts_file) if prompts_file is not None else []
    plan = plan_video(
        video,
        out if out is not None else Path("pdmtrack_out") / video.stem,
        masks=mask_files(masks or [], start or 0),
        prompts=prompts + prompts_from_flags(point or [], box or []),
        classes=list(classes or []),
        start=start,
        end=end,
        direction=direction,
        resize_mask=resize_mask,
        png=png,
        overlay=overlay,
        rle=rle,
        exports=list(exports or []),
        backend=settings.runtime.backend,
        settings=settings,
        overwrite=overwrite,
    )
    if init == "ovdiff":
        from pdmtrack.runs.video_folder import check_ovdiff_plan, plan_with_ovdiff_objects

        check_ovdiff_plan(plan)
    tracker = Tracker(settings)
    if init == "ovdiff":
        plan = plan_with_ovdiff_objects(tracker, plan, prototype_config, segment_config, prototypes_dir)
    summary = track_to_folder(tracker, plan)
    for note in summary.notes:
        typer.echo(note, err=True)
    typer.echo(
        f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.2f} frames/s); "
        f"features: {summary.cached_frames} frames from cache, {summary.computed_frames} computed; "
        f"masks in {summary.out_dir}"
    )


@commands.command("propagate-batch")
@with_track_options
def propagate_batch(
    jobs: Annotated[Path | None, typer.Argument(help="CSV (header: video,mask,cls,out) or JSONL jobs file.")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: one subfolder per video, and batch_summary.csv.")] = Path(
        "pdmtrack_batch"
    ),
    videos_dir: Annotated[Path | None, typer.Option("--videos", help="Folder mode: a folder of videos (files or frame folders).")] = None,
    masks_dir: Annotated[
        Path | None, typer.Option("--masks", help="Folder mode: <video name>.png (first frame) or <video name>/<frame>.png masks.")
    ] = None,
    default_classes: Annotated[list[str] | None, typer.Option("--cls", help="Class name(s) for rows that give none.")] = None,
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Write overlay.mp4 per video.")] = True,
    png: Annotated[bool, typer.Option("--png/--no-png", help="Write one indexed PNG per frame.")] = True,
    rle: Annotated[bool, typer.Option("--rle", help="Write masks.json (COCO RLE) per video.")] = False,
    workers: WORKERS_OPTION = "1",
    ray_address: RAY_ADDRESS_OPTION = None,
    settings: TrackSettings = TrackSettings(),
) -> None:
    """Track many videos: rows of a JOBS file, or --videos DIR --masks DIR; a summary at the end."""
    from pdmtrack.runs.batch import folder_rows, read_jobs
    from pdmtrack.runs.batch import propagate_batch as run_batch
    from pdmtrack.runs.pool import parse_workers

    if (jobs is None) == (videos_dir is None):
        raise InputError("propagate-batch", "give a JOBS file, or --videos DIR with --masks DIR (not both)")
    if videos_dir is not None and masks_dir is None and not default_classes:
        raise ParameterError("masks_dir", "folder mode needs --masks DIR (or --cls NAME to track by class name)")
    rows = read_jobs(jobs) if jobs is not None else folder_rows(videos_dir, masks_dir)  # type: ignore[arg-type]
    base = jobs.resolve().parent if jobs is not None else Path(".")
    outcome = run_batch(
        rows, out, settings, base=base, default_classes=list(default_classes or []), png=png, overlay=overlay, rle=rle,
        workers=parse_workers(workers), ray_address=ray_address, inputs=[p for p in (jobs, videos_dir, masks_dir) if p is not None],
    )  # fmt: skip
    typer.echo(outcome.format())
    if outcome.failed:
        raise typer.Exit(1)
