"""``pdmtrack eval ...``: the benchmarks."""

from pathlib import Path
from typing import Annotated

import typer

from pdmtrack.cli.options import (
    RAY_ADDRESS_OPTION,
    RERANK_HELP,
    WORKERS_OPTION,
    PrototypesDir,
    pdm_features_only,
    subset,
    with_global_options,
    with_prototype_options,
    with_segment_options,
    with_track_options,
)
from pdmtrack.config import GlobalConfig, TrackSettings
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig

eval_app = typer.Typer(
    help="Evaluate on DAVIS 2017, PerMIS (video/image), PerMIR, PerSeg, revisited Oxford/Paris and PASCAL VOC.",
    no_args_is_help=True,
    rich_markup_mode=None,
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
    names = subset("sequences", sequences, "sequence", "the whole split")
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

    chosen = subset("objects", objects, "object", "every object")
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
    pdm_features_only(settings)
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
