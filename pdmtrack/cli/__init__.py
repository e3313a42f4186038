"""The ``pdmtrack`` command line: parses arguments and calls the library, nothing more.

One module per command group: ``track`` (propagate, propagate-batch), ``annotate``, ``export``, ``images`` (segment,
retrieve, index), ``ovdiff`` (segment-ov, prototypes), ``evaluate`` (eval), ``maintenance``
(build-permis, cache); ``options`` holds the option tables generated from the settings. Heavy
modules (torch and the models) are imported inside the command that runs, so ``--help`` is fast.

Every user mistake surfaces as :class:`pdmtrack.errors.InputError`; :func:`main` prints it
as one line on stderr and exits with code 2 (a :class:`pdmtrack.errors.ParameterError` under
the flag of the invoked command that sets that parameter).
"""

import sys

import typer

from pdmtrack.cli import annotate, evaluate, export, images, maintenance, ovdiff, track
from pdmtrack.errors import InputError, ParameterError

app = typer.Typer(
    name="pdmtrack",
    help="Track object instances through videos zero-shot with PDM diffusion features.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
for commands in (track.commands, annotate.commands, export.commands, images.commands, ovdiff.commands, maintenance.commands):
    app.add_typer(commands)
app.add_typer(evaluate.eval_app, name="eval")
app.add_typer(ovdiff.prototypes_app, name="prototypes")
app.add_typer(images.index_app, name="index")
app.add_typer(maintenance.cache_app, name="cache")


def _flag(parameter: str, words: list[str]) -> str:
    """The flag of the command that ``words`` (the command line) invoke which sets the library
    parameter ``parameter``: the option of that name (``classes`` -> ``--cls``), an argument's
    name in capitals (``VIDEO``); else ``--<parameter with dashes>``."""
    command = typer.main.get_command(app)
    for word in words:
        subcommands = getattr(command, "commands", {})
        if word not in subcommands:
            break
        command = subcommands[word]
    for param in command.params:
        if param.name == parameter:
            return max(param.opts, key=len) if param.param_type_name == "option" else param.name.upper()
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
