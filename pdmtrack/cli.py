"""The ``pdmtrack`` command line: parses arguments and calls the library, nothing more.

Every user mistake surfaces as :class:`pdmtrack.errors.InputError`; :func:`main` prints it
as one line on stderr and exits with code 2.
"""

import functools
import inspect
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import typer

from pdmtrack.config import (
    GlobalConfig,
    OptionField,
    TrackSettings,
    check_choice,
    config_from_options,
    options_of,
)
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig

app = typer.Typer(
    name="pdmtrack",
    help="Track object instances through videos zero-shot with PDM diffusion features.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(
    help="Evaluate on DAVIS 2017, PerMIS (video/image), PerMIR, PerSeg, revisited Oxford/Paris and PASCAL VOC.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(eval_app, name="eval")


def _cli_type(option: OptionField) -> Any:
    """The type typer parses an option's flag as: a Literal or ``int | str`` as str, a
    ``tuple[str, ...]`` as one comma-separated str, ``X | None`` as Optional[X]."""
    if get_origin(option.hint) is tuple:
        return Optional[str]
    members = get_args(option.hint) if get_origin(option.hint) in (Union, types.UnionType) else (option.hint,)
    values = [member for member in members if member is not type(None)]
    single = values[0] if len(values) == 1 and get_origin(values[0]) is not Literal else str
    return Optional[single] if type(None) in members else single


def _cli_help(option: OptionField) -> str:
    """The field's help, with the choices of a Literal and the form of a list."""
    if get_origin(option.hint) is Literal:
        return f"{option.help} One of: {' | '.join(get_args(option.hint))}."
    if get_origin(option.hint) is tuple:
        return f"{option.help} Comma-separated; '' for none."
    return option.help


def option_table(config_class: type) -> dict[str, tuple[Any, Any]]:
    """The CLI flags of a settings class's options: name -> (typer annotation, default); the flag
    of option ``name`` is ``--<name with dashes>``, a bool option a flag that sets it."""
    table: dict[str, tuple[Any, Any]] = {}
    for name, option in options_of(config_class).items():
        if not option.cli:
            continue
        flag = "--" + name.replace("_", "-")
        if option.hint is bool:
            flag = f"{flag}/--no-{flag[2:]}" if option.default else flag
        default = None if get_origin(option.hint) is tuple else option.default  # a list's default: the field's
        table[name] = (Annotated[_cli_type(option), typer.Option(flag, help=_cli_help(option))], default)
    return table


WORKERS_OPTION = Annotated[str, typer.Option(help="Parallel workers: N, or auto (one per GPU); N > 1 or --ray-address runs them with Ray.")]
RAY_ADDRESS_OPTION = Annotated[
    str | None, typer.Option(help="Join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting one.")
]


CONTEXT = "cli_context"  # the parameter typer passes the click context in


def with_options(config_class: type, make: Callable[..., Any], param: str) -> Callable:
    """A decorator adding the flags of ``config_class``'s options to a command, which receives
    ``make(**given)`` as ``param``: only the flags the user gave, so that ``make`` can tell an
    option set to its default value from one left alone (comma lists split)."""
    table = option_table(config_class)
    lists = {name for name, option in options_of(config_class).items() if get_origin(option.hint) is tuple}

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command).parameters.values() if p.name != param]
        inherited = any(p.name == CONTEXT for p in own)  # an inner decorator's: typer fills one Context parameter only
        shared = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for name, (annotation, default) in table.items()
        ]
        if not inherited:
            shared.append(inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            ctx = kwargs[CONTEXT] if inherited else kwargs.pop(CONTEXT)
            values = {name: kwargs.pop(name) for name in table}
            given = {
                name: tuple(_split_list(value) or ()) if name in lists else value for name, value in values.items() if _given(ctx, name)
            }
            command(**kwargs, **{param: make(**given)})

        wrapper.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {
            **{k: v for k, v in command.__annotations__.items() if k != param},
            **{name: annotation for name, (annotation, _) in table.items()},
            CONTEXT: typer.Context,
        }
        return wrapper

    return decorate


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option ``name`` (on the command line or through its environment variable)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


# Add the shared tracker flags to a command, which receives them as ``settings``.
with_track_options = with_options(TrackSettings, TrackSettings.from_options, "settings")


# ----------------------------------------------------------------------------- OVDiff
prototypes_app = typer.Typer(help="OVDiff class prototypes from generated support images.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(prototypes_app, name="prototypes")
with_prototype_options = with_options(PrototypeConfig, functools.partial(config_from_options, PrototypeConfig), "prototype_config")
with_segment_options = with_options(SegmentConfig, functools.partial(config_from_options, SegmentConfig), "segment_config")
PrototypesDir = Annotated[Path | None, typer.Option("--prototypes", help="Prototype folder (default: one per model in the user cache).")]
SupportDir = Annotated[Path | None, typer.Option(help="Also write the support images and their masks here (classes built in this run).")]
Classes = Annotated[str, typer.Option(help="Comma-separated class names (ids 1.. in this order).")]


# Add the global descriptor's flags to a command, which receives them as ``global_config``.
with_global_options = with_options(GlobalConfig, functools.partial(config_from_options, GlobalConfig), "global_config")


@app.command()
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
    """Track the instances of given masks (or of a class name) through a video."""
    from pdmtrack.runs.video_folder import mask_files, plan_run, track_to_folder
    from pdmtrack.tracking.tracker import Tracker

    check_choice("init", init, ("attention", "ovdiff"))
    plan = plan_run(
        video,
        out if out is not None else Path("pdmtrack_out") / video.stem,
        masks=mask_files(masks or [], start or 0),
        classes=list(classes or []),
        start=start,
        end=end,
        direction=direction,
        resize_mask=resize_mask,
        png=png,
        overlay=overlay,
        rle=rle,
        backend=settings.runtime.backend,
        settings=settings,
        overwrite=overwrite,
    )
    if init == "ovdiff":
        from pdmtrack.ovdiff.first_frame import check_ovdiff_plan, plan_with_ovdiff_objects

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


@eval_app.command("davis")
@with_track_options
def eval_davis(
    root: Annotated[Path, typer.Option(help="DAVIS 2017 root (JPEGImages/, Annotations/, ImageSets/).")],
    split: Annotated[str, typer.Option(help="ImageSets/2017/<split>.txt")] = "val",
    results_dir: Annotated[
        Path | None, typer.Option("--results", help="Evaluate this results folder (<seq>/<frame>.png) instead of tracking.")
    ] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Where results/ and the reports go.")] = None,
    sequences: Annotated[str | None, typer.Option(help="Comma-separated subset of sequences.")] = None,
    class_map: Annotated[Path | None, typer.Option(help='JSON {"<seq>": "class name"} for --cls per sequence.')] = None,
    workers: WORKERS_OPTION = "1",
    ray_address: RAY_ADDRESS_OPTION = None,
    settings: TrackSettings = TrackSettings(),
) -> None:
    """J, F and J&F to the official DAVIS 2017 semi-supervised protocol."""
    from pdmtrack.eval.davis import evaluate_davis
    from pdmtrack.runs.pool import parse_workers

    if results_dir is None and out is None:
        raise InputError("pdmtrack eval davis", "give --results DIR to evaluate, or -o OUT to track and evaluate")
    names = _subset("sequences", sequences, "sequence", "the whole split")
    evaluate_davis(
        root,
        split,
        results_dir=results_dir,
        out_dir=out,
        sequences=names,
        class_map=class_map,
        settings=settings,
        workers=parse_workers(workers),
        ray_address=ray_address,
    )


@eval_app.command("permis")
@with_track_options
def eval_permis(
    root: Annotated[Path, typer.Option(help="PerMIRS folder written by build-permis.")],
    task: Annotated[str, typer.Option(help="video | image")] = "video",
    out: Annotated[Path, typer.Option("-o", "--out", help="Where results and reports go.")] = Path("pdmtrack_eval/permis"),
    results_dir: Annotated[Path | None, typer.Option("--results", help="(video) evaluate this results folder instead of tracking.")] = None,
    workers: WORKERS_OPTION = "1",
    ray_address: RAY_ADDRESS_OPTION = None,
    settings: TrackSettings = TrackSettings(),
) -> None:
    """PerMIS: video label propagation (J&F) or image segmentation (mIoU, bIoU)."""
    from pdmtrack.eval.permirs import evaluate_permis_image, evaluate_permis_video
    from pdmtrack.runs.pool import parse_workers

    parallel = {"workers": parse_workers(workers), "ray_address": ray_address}
    if results_dir is not None and task != "video":
        raise ParameterError("results_dir", "only --task video evaluates an existing results folder")
    if task == "video":
        evaluate_permis_video(root, out_dir=out, settings=settings, results_dir=results_dir, **parallel)
    elif task == "image":
        evaluate_permis_image(root, out_dir=out, settings=settings, **parallel)
    else:
        raise ParameterError("task", f"unknown task '{task}' (choose from video, image)")


RERANK_HELP = "Rank with the global descriptor first and re-rank its N best with PDM (0: the global ranking alone)."


@eval_app.command("permir")
@with_track_options
@with_global_options
def eval_permir(
    root: Annotated[Path, typer.Option(help="PerMIRS folder written by build-permis.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Where reports go.")] = Path("pdmtrack_eval/permir"),
    rerank: Annotated[int | None, typer.Option(help=RERANK_HELP)] = None,
    global_config: GlobalConfig = GlobalConfig(),
    workers: WORKERS_OPTION = "1",
    ray_address: RAY_ADDRESS_OPTION = None,
    settings: TrackSettings = TrackSettings(),
) -> None:
    """PerMIR: personalised retrieval (mAP, Recall@1/5/10)."""
    from pdmtrack.eval.permirs import evaluate_permir
    from pdmtrack.runs.pool import parse_workers

    evaluate_permir(
        root, out_dir=out, settings=settings, rerank=rerank, global_config=global_config,
        workers=parse_workers(workers), ray_address=ray_address,
    )  # fmt: skip


@eval_app.command("perseg")
@with_track_options
def eval_perseg(
    root: Annotated[Path, typer.Option(help="PerSeg root (Images/<object>/, Annotations/<object>/).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Where the masks and reports go.")] = Path("pdmtrack_eval/perseg"),
    names_as_classes: Annotated[
        bool, typer.Option("--names-as-classes", help="Use each object's folder name as its class name (semantic map).")
    ] = False,
    objects: Annotated[str | None, typer.Option(help="Comma-separated subset of objects.")] = None,
    settings: TrackSettings = TrackSettings(),
) -> None:
    """PerSeg: personalised segmentation (mIoU, bIoU as PerSAM aggregates them)."""
    from pdmtrack.eval.perseg import evaluate_perseg

    chosen = _subset("objects", objects, "object", "every object")
    evaluate_perseg(root, out_dir=out, settings=settings, names_as_classes=names_as_classes, objects=chosen)


@eval_app.command("roxford")
@with_track_options
@with_global_options
def eval_roxford(
    root: Annotated[Path, typer.Option(help="Folder holding <dataset>/gnd_<dataset>.pkl and <dataset>/jpg/.")],
    dataset: Annotated[str, typer.Option(help="roxford5k | rparis6k")] = "roxford5k",
    out: Annotated[Path, typer.Option("-o", "--out", help="Where reports go.")] = Path("pdmtrack_eval/revisited"),
    rerank: Annotated[int | None, typer.Option(help=RERANK_HELP)] = None,
    global_config: GlobalConfig = GlobalConfig(),
    settings: TrackSettings = TrackSettings(),
) -> None:
    """Revisited Oxford / Paris: mAP Medium and Hard (official easy/hard/junk protocol)."""
    from pdmtrack.eval.revisited import evaluate_revisited

    evaluate_revisited(root, dataset, out_dir=out, settings=settings, rerank=rerank, global_config=global_config)


def _pdm_features_only(settings: TrackSettings) -> None:
    """OVDiff's prototypes are PDM features: the baselines' ``--features`` do not apply."""
    if settings.source.kind != "pdm":
        raise ParameterError("features", f"OVDiff commands use PDM features only, not '{settings.source.kind}'")


@app.command()
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


@app.command()
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


index_app = typer.Typer(help="Global-descriptor indexes of image galleries (FAISS).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(index_app, name="index")


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


@app.command("build-permis")
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
        kwargs["drop_sources"] = _split_list(drop_sources)
    summary = build_permirs(
        burst,
        out,
        splits=_split_list(splits),
        annotations=annotations or None,
        overwrite=overwrite,
        **kwargs,
    )
    typer.echo(summary.format())


@app.command("propagate-batch")
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


cache_app = typer.Typer(help="Inspect or clear the feature cache.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")
CACHE_DIR_OPTION = Annotated[Path | None, typer.Option(help="Feature cache folder (default: $PDMTRACK_CACHE_DIR, else the user cache).")]


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
    _pdm_features_only(settings)
    from pdmtrack.ovdiff.pipeline import build_prototypes

    builder = build_prototypes(_split_list(classes) or [], settings, prototype_config, out, support_dir, rebuild)
    report = builder.report
    for name in report.loaded:
        typer.echo(f"{name}: stored")
    for name in report.built:
        typer.echo(f"{name}: built in {report.class_seconds[name]:.1f} s")
    if report.support_images:
        rate = report.support_images / max(report.sampling_seconds, 1e-9)
        typer.echo(f"{report.support_images} support images sampled in {report.sampling_seconds:.1f} s ({rate:.2f} images/s)")
    typer.echo(f"prototypes in {builder.store.root}")


@app.command("segment-ov")
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
    _pdm_features_only(settings)
    from pdmtrack.ovdiff.pipeline import segment_images

    summary = segment_images(
        images,
        out,
        _split_list(classes) or [],
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


@eval_app.command("voc")
@with_track_options
@with_prototype_options
@with_segment_options
def eval_voc(
    root: Annotated[Path, typer.Option(help="VOCdevkit/VOC2012 (JPEGImages/, SegmentationClass/, ImageSets/).")],
    split: Annotated[str, typer.Option(help="ImageSets/Segmentation/<split>.txt")] = "val",
    out: Annotated[Path, typer.Option("-o", "--out", help="Where the reports go.")] = Path("pdmtrack_eval/voc"),
    prototypes_dir: PrototypesDir = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N images of the split.")] = None,
    save_predictions: Annotated[bool, typer.Option("--save-predictions", help="Write predictions/<id>.png.")] = False,
    settings: TrackSettings = TrackSettings(),
    prototype_config: PrototypeConfig = PrototypeConfig(),
    segment_config: SegmentConfig = SegmentConfig(),
) -> None:
    """PASCAL VOC 2012 semantic segmentation with OVDiff: mIoU over background + 20 classes."""
    _pdm_features_only(settings)
    from pdmtrack.eval.voc import evaluate_voc

    evaluate_voc(
        root,
        split,
        out,
        settings=settings,
        prototypes=prototype_config,
        segment=segment_config,
        prototypes_dir=prototypes_dir,
        limit=limit,
        save_predictions=save_predictions,
    )


def _split_list(text: str | None) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; None stays None."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _subset(parameter: str, text: str | None, what: str, default: str) -> list[str] | None:
    """The names of the comma-separated subset ``parameter`` (None when not given); naming none is an error."""
    names = _split_list(text)
    if names == []:
        raise ParameterError(parameter, f"the list '{text}' names no {what}; give comma-separated names, or leave it out for {default}")
    return names


def _flag(parameter: str, words: list[str]) -> str:
    """The flag of the command that ``words`` (the command line) invoke which sets the library
    parameter ``parameter``: the option of that name (``classes`` -> ``--cls``), an argument's
    metavar; else ``--<parameter with dashes>``."""
    command = typer.main.get_command(app)
    for word in words:
        subcommands = getattr(command, "commands", {})
        if word not in subcommands:
            break
        command = subcommands[word]
    for param in command.params:
        if param.name == parameter:
            return max(param.opts, key=len) if param.param_type_name == "option" else param.human_readable_name
    return "--" + parameter.replace("_", "-")


def main() -> None:
    """Entry point: run the app; user mistakes become one line on stderr and exit code 2."""
    try:
        app()
    except ParameterError as err:
        print(f"pdmtrack: error: {_flag(err.parameter, sys.argv[1:])}: {err.problem}", file=sys.stderr)
        sys.exit(2)
    except InputError as err:
        print(f"pdmtrack: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("pdmtrack: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
