"""The command line: parse, build options, run, report. Nothing heavy at import.

``bgrm --help`` must stay fast, so onnxruntime, scipy and imageio are
imported only inside the commands that need them.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from bgrm.errors import BgrmError, ExitStatus, ParameterError, first_line, unwind_on_termination
from bgrm.models_cli import models
from bgrm.options import (
    EDGE_ORDER,
    PARAM_BY_NAME,
    PARAMS,
    from_params,
    params_for,
    parse_color,
)
from bgrm.settings import SETTINGS, RunSettings
from bgrm.stdio import command_line_process
from bgrm.version import __version__


class ColorType(click.ParamType):
    name = "HEX"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_color(value)
        except ParameterError:
            # Click names the option already: "Invalid value for '--bg-color-value'".
            self.fail(f"{value!r} is not a hex colour like '#00ff00' or '#0f0'", param, ctx)


class Seconds(click.FloatRange):
    """More than 0 and at most a million seconds (11 days), and a number: nan and
    inf pass a range check, and timers overflow on 1e300."""

    name = "seconds"

    def __init__(self):
        super().__init__(0, 1e6, min_open=True)

    def convert(self, value, param, ctx):
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:  # nan compares unequal to itself
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def _click_option(p):
    """One PARAMS row -> a Click option with the same range and default."""
    kwargs: dict = {"help": p.help, "default": None}
    if p.kind == "bool":
        # --no-... lets a flag on the command line switch off what --params switched on.
        off = "--no-" + p.flag[2:]
        return click.option(f"{p.flag}/{off}", p.name, default=None, help=p.help)
    if p.kind == "int":
        kwargs["type"] = click.IntRange(p.lo, p.hi)
        if p.default is not None:
            kwargs["help"] += f"  [default: {p.default}]"
    elif p.kind == "float":
        kwargs["type"] = float
        kwargs["help"] += f"  [default: {p.default}]"
    elif p.kind == "choice":
        kwargs["type"] = click.Choice(p.choices)
        if p.default is not None:
            kwargs["help"] += f"  [default: {p.default}]"
    elif p.kind == "color":
        kwargs["type"] = ColorType()
        kwargs["help"] += "  [default: #{:02x}{:02x}{:02x}]".format(*p.default)
    elif p.kind == "path":
        kwargs["type"] = click.Path(exists=True, dir_okay=False, path_type=Path)
    return click.option(p.flag, p.name, **kwargs)


def run_options(timeout_default: str = "no limit: leave the option out",
                serve: bool = False) -> list:
    """Where and how files run: one option per row of ``plan.SETTINGS`` (those of
    ``bgrm serve`` with ``serve``), values into ``plan.RunSettings``."""
    options = []
    for s in SETTINGS:
        if serve and not s.serve:
            continue
        kwargs: dict = {"help": s.help, "metavar": s.metavar}
        if s.kind == "int":
            kwargs["type"] = click.IntRange(s.lo, s.hi)
        elif s.kind == "seconds":
            kwargs["type"] = Seconds()
            kwargs["help"] += f" [default: {timeout_default}]"
        elif s.kind == "choice":
            kwargs.update(type=click.Choice(s.choices), default=s.default, show_default=True)
        elif s.kind == "flag":
            kwargs["is_flag"] = True
        options.append(click.option(*s.flags, s.name, **kwargs))
    return options


def _decorated(decorators: list):
    def decorate(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return decorate


def job_options(job: str):
    """Decorator: the API parameters of ``job`` plus the run options both jobs share."""

    def decorate(fn):
        shared = [
            click.argument("inputs", nargs=-1, required=True),
            click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
                         help="Write outputs here instead of beside each input."),
            click.option("--params", "params_file", type=click.Path(exists=True, dir_okay=False),
                         help="The hosted API's params as a JSON file; flags given here win."),
            click.option("-r", "--recursive", is_flag=True, help="Look into sub-folders."),
            *run_options(),
            click.option("--json", "as_json", is_flag=True,
                         help="Print the API's results object on stdout."),
            click.option("--progress/--no-progress", default=None,
                         help="Progress bar on stderr [default: when stderr is a terminal]."),
        ]
        for decorator in reversed([*(_click_option(p) for p in params_for(job)), *shared]):
            fn = decorator(fn)
        return fn

    return decorate


def _options(job: str, ctx: click.Context, kwargs: dict, params_file: str | None):
    """Options from --params and the flags; flags the user typed win."""
    params: dict = {}
    if params_file:
        try:
            params = json.loads(Path(params_file).read_text())
        except (OSError, ValueError) as exc:
            raise ParameterError(f"--params {params_file}: not a JSON object ({exc})") from None
        if not isinstance(params, dict):
            raise ParameterError(f"--params {params_file}: not a JSON object")
    typed = {
        p.name: kwargs[p.name] for p in params_for(job)
        if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE
        and kwargs[p.name] is not None
    }
    opts = from_params(job, params, typed)
    for warning in _without_effect(job, typed, opts):
        click.echo(f"bgrm: {warning}", err=True)
    return opts


_MATTING_FLAGS = ("alpha_fg", "alpha_bg", "alpha_erode", "alpha_base_size")


def _without_effect(job: str, typed: dict, opts) -> list[str]:
    """Flags the user typed that these options will ignore: say so, rather than
    leave them wondering why `--bg-color-value red` gave a transparent PNG."""
    said = []
    # ViTMatte's trimap reads the thresholds and erosion too, not the base size.
    unused = [PARAM_BY_NAME[n].flag for n in _MATTING_FLAGS if n in typed
              and not (opts.matting.enabled or opts.edges.vitmatte and n != "alpha_base_size")]
    if unused:
        said.append(f"{', '.join(unused)}: no effect without --alpha-matting"
                    + ("" if "--alpha-base-size" in unused else " or --vitmatte"))
    if job == "image" and "bg_color_value" in typed and opts.bg_type != "color":
        said.append("--bg-color-value: no effect without --bg-type color")
    return said


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100})
@click.version_option(__version__, prog_name="bgrm")
def cli():
    """Remove backgrounds from images and videos, offline, with U^2-Net, IS-Net, BiRefNet or BRIA models."""


# Said once here rather than in each edge flag's own help.
_EDGE_STEPS = ("The edge steps (--post-process-mask, --mask-grow, --alpha-matting or --vitmatte, "
               "--mask-feather, --decontaminate, --crop) always run in this order, whatever "
               f"order their flags come in: {EDGE_ORDER}.")


@cli.command(help=f"""Remove the background from images: files, folders, or - for stdin.

    Each INPUT gives <stem>_processed.png (or .webp, .jpg: --format) beside it
    (or in --output-dir).

    {_EDGE_STEPS}
    """)
@job_options("image")
@click.pass_context
def image(ctx, **kwargs):
    _run(ctx, "image", kwargs)


@cli.command(help=f"""Remove the background from videos, in one of nine output formats.

    Each INPUT gives <stem>_processed.<ext> beside it (or in --output-dir).

    {_EDGE_STEPS}
    """)
@job_options("video")
@click.pass_context
def video(ctx, **kwargs):
    _run(ctx, "video", kwargs)


cli.add_command(models)  # light: click and hashlib only; tqdm/urllib load on install


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; other than loopback, an API key is required.")
@click.option("--port", type=click.IntRange(0, 65535), default=5000, show_default=True,
              help="Port to listen on (0: any free port, said at start).")
@click.option("--api-key", envvar="BGRM_API_KEY", metavar="KEY",
              help="Required on POST /v1/convert/ as the header 'Authorization: KEY' "
                   "[env: BGRM_API_KEY].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Uploads, results and the job database [default: "
                   "~/.local/share/bgrm/serve].")
@click.option("--keep", default="24h", show_default=True, metavar="DURATION",
              help="How long finished results stay (24h, 30m, 90s, 2d; at least 1m).")
@click.option("--max-upload", default="2GB", show_default=True, metavar="SIZE",
              help="Most bytes of files in one request (5MB, 2GB, 1GiB); over it: 413.")
@click.option("--max-files", type=click.IntRange(1, 100000), default=100, show_default=True,
              help="Most input files in one request; over it: 413.")
@click.option("--min-free", default="1GB", show_default=True, metavar="SIZE",
              help="Free space kept on the data dir's disk for the jobs under way; "
                   "below it new requests get 507.")
@click.option("--max-models", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Models kept loaded at once; the least recently used is let go.")
@click.option("--custom-model", "custom_models", multiple=True, metavar="NAME=FAMILY:PATH",
              help="Serve your own .onnx export as model=NAME (family: u2net, isnet, "
                   "birefnet or bria); repeatable.")
@click.option("--allow-private-urls", is_flag=True,
              help="Let image_url and webhook_url reach loopback, private and link-local "
                   "addresses (refused by default: the network behind the server).")
@_decorated(run_options("10 min per photo; for a video 10 min + 10 s per frame",
                        serve=True))
def serve(host, port, api_key, data_dir, keep, max_upload, max_files, min_free, max_models,
          custom_models, allow_private_urls, **run):
    """Serve the hosted API (/v1/convert/, /v1/results/) and a page at /.

    The hosted API's client examples work with only the domain (and key) changed.
    Every request's files run with the run options given here. One server per
    --data-dir: a second one there exits at once.
    """
    from bgrm import serve as service

    service.require()  # before anything of the extra is imported
    from bgrm.engine import check_engine
    from bgrm.serve.jobs import Limits
    from bgrm.serve.units import parse_duration, parse_size

    settings = RunSettings.take(run)
    check_engine(settings.engine, settings.device)
    limits = Limits(max_upload=parse_size(max_upload, "--max-upload"),
                    max_files=max_files, min_free=parse_size(min_free, "--min-free"))
    service.run(host=host, port=port, api_key=api_key, data_dir=data_dir,
                keep=parse_duration(keep), settings=settings,
                say=lambda message: click.echo(f"bgrm serve: {message}", err=True),
                limits=limits, max_models=max_models, allow_private_urls=allow_private_urls,
                custom_models=[service.parse_custom_model(c) for c in custom_models])


def _run(ctx, job: str, kwargs: dict) -> None:
    from bgrm.command import run_command

    opts = _options(job, ctx, kwargs, kwargs.pop("params_file"))
    for p in PARAMS:
        kwargs.pop(p.name, None)
    settings = RunSettings.take(kwargs)
    ctx.exit(run_command(job, opts, settings=settings, **kwargs))


def main(args: list[str] | None = None) -> None:
    """Entry point: ``args`` (default: the command line's) run in this process set up
    as a command line's (``stdio.command_line_process``); exits with its status."""
    with command_line_process():
        status = _status(args)
    sys.exit(int(status or 0))


def _status(args: list[str] | None) -> int:
    """Run the command: errors and Ctrl-C mapped to exit statuses, in this one place."""
    show_traceback = "--traceback" in (sys.argv if args is None else args)
    # `kill`, `timeout`, a closed terminal: unwind as Ctrl-C does, so that
    # temporary files are removed and workers stopped.
    unwind_on_termination()
    try:
        # prog_name: usage lines read "bgrm image", also under `python -m bgrm`.
        status = cli.main(args, standalone_mode=False, prog_name="bgrm")
    except click.exceptions.Exit as exc:
        status = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        status = exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Click turns Ctrl-C inside a command into Abort. The run is over: one
        # more Ctrl-C (a user pressing it again) must not kill the exit itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        click.echo("bgrm: interrupted", err=True)
        status = ExitStatus.INTERRUPTED
    except BgrmError as exc:
        if show_traceback:
            import traceback

            traceback.print_exc()
        click.echo(f"bgrm: {exc}", err=True)
        status = exc.exit_status
    except BrokenPipeError:
        # `bgrm image - | head`: the reader left; nothing more can be said on stdout.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = ExitStatus.FAILED
    except Exception as exc:  # noqa: BLE001 - a bug: still one line unless asked
        if show_traceback:
            raise
        click.echo(f"bgrm: internal error: {type(exc).__name__}: {first_line(exc)} "
                   "(run again with --traceback for details)", err=True)
        status = ExitStatus.FAILED
    return status
