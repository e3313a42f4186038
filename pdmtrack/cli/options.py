"""The option tables shared by the commands, generated from the settings fields (help, flat
option name, default), and the decorators that add them to a command."""

import functools
import inspect
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import typer

from pdmtrack.config import GlobalConfig, OptionField, TrackSettings, config_from_options, options_of
from pdmtrack.errors import ParameterError
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig


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
                name: tuple(split_list(value) or ()) if name in lists else value for name, value in values.items() if _given(ctx, name)
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


# The tracker's flags; a command receives them as ``settings``.
with_track_options = with_options(TrackSettings, TrackSettings.from_options, "settings")
# The global descriptor's flags; a command receives them as ``global_config``.
with_global_options = with_options(GlobalConfig, functools.partial(config_from_options, GlobalConfig), "global_config")
# OVDiff's flags; a command receives them as ``prototype_config`` and ``segment_config``.
with_prototype_options = with_options(PrototypeConfig, functools.partial(config_from_options, PrototypeConfig), "prototype_config")
with_segment_options = with_options(SegmentConfig, functools.partial(config_from_options, SegmentConfig), "segment_config")

WORKERS_OPTION = Annotated[str, typer.Option(help="Parallel workers: N, or auto (one per GPU); N > 1 or --ray-address runs them with Ray.")]
RAY_ADDRESS_OPTION = Annotated[
    str | None, typer.Option(help="Join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting one.")
]
RERANK_HELP = "Rank with the global descriptor first and re-rank its N best with PDM (0: the global ranking alone)."
PrototypesDir = Annotated[Path | None, typer.Option("--prototypes", help="Prototype folder (default: one per model in the user cache).")]


def split_list(text: str | None) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; None stays None."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def subset(parameter: str, text: str | None, what: str, default: str) -> list[str] | None:
    """The names of the comma-separated subset ``parameter`` (None when not given); naming none is an error."""
    names = split_list(text)
    if names == []:
        raise ParameterError(parameter, f"the list '{text}' names no {what}; give comma-separated names, or leave it out for {default}")
    return names


def pdm_features_only(settings: TrackSettings) -> None:
    """OVDiff's prototypes are PDM features: the baselines' ``--features`` do not apply."""
    if settings.source.kind != "pdm":
        raise ParameterError("features", f"OVDiff commands use PDM features only, not '{settings.source.kind}'")
