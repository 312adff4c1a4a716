"""``bgrm models``: see, verify and install the U^2-Net models bgrm uses.

Imports only click and bgrm.models (hashlib, json), so ``bgrm --help`` stays light;
tqdm and urllib are imported by ``install`` when it runs.
"""

from __future__ import annotations

import json
import sys

import click

from bgrm.errors import ExitStatus
from bgrm.models import REGISTRY, install, is_url, models_dir, status


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


@click.group()
def models():
    """See, verify and install models (u2net, u2net_human_seg, u2netp).

    Models live in $BGRM_MODELS, else $U2NET_HOME, else ~/.u2net; u2netp is
    also bundled. Only `bgrm models install NAME --from URL` uses the network.
    """


@models.command("list", short_help="List the models with status, size and path.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON on stdout.")
def list_models(as_json: bool) -> None:
    """List the models: status (bundled, installed, missing, corrupt), size, path."""
    rows = [status(spec) for spec in REGISTRY.values()]
    if as_json:
        click.echo(json.dumps({"models_dir": str(models_dir()),
                               "models": [row.as_dict() for row in rows]}, indent=2))
        return
    click.echo(f"models directory: {models_dir()}")
    width = max(len(name) for name in REGISTRY)
    for row in rows:
        click.echo(f"{row.spec.name:<{width}}  {row.status:<9}  {_size(row.size):>9}  "
                   f"{row.path}")


@models.command("verify", short_help="Check model files against their official md5.")
@click.argument("names", nargs=-1, type=click.Choice(list(REGISTRY)))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.pass_context
def verify_models(ctx: click.Context, names: tuple[str, ...], as_json: bool) -> None:
    """Check model files against their official md5 (a full read).

    With no NAME, every model file present is checked and missing ones are
    listed; a NAME given that is missing is a failure. Exit status 1 when a
    file is corrupt or a named model is missing.
    """
    specs = [REGISTRY[n] for n in dict.fromkeys(names)] or list(REGISTRY.values())
    rows = [status(spec, full=True) for spec in specs]
    bad = [r for r in rows if r.status == "corrupt" or (names and r.status == "missing")]
    if as_json:
        click.echo(json.dumps({"models_dir": str(models_dir()), "ok": not bad,
                               "models": [r.as_dict() for r in rows]}, indent=2))
    else:
        width = max(len(r.spec.name) for r in rows)
        for r in rows:
            if r.status == "corrupt":
                what = f"CORRUPT  md5 {r.actual_md5}, expected {r.spec.md5}  {r.path}"
            elif r.status == "missing":
                what = f"missing  (install: bgrm models install {r.spec.name} --from PATH|URL)"
            else:
                what = f"ok       {r.status}  {r.path}"
            click.echo(f"{r.spec.name:<{width}}  {what}")
    if bad:
        ctx.exit(ExitStatus.FAILED)


_OFFICIAL = "\b\nOfficial files (rembg releases):\n" + "\n".join(
    f"  {spec.name:<16} {spec.url}" for spec in REGISTRY.values() if not spec.bundled)


@models.command("install", epilog=_OFFICIAL,
                short_help="Install a model from a file or URL, md5 checked.")
@click.argument("name", type=click.Choice(list(REGISTRY)))
@click.option("--from", "source", required=True, metavar="PATH|URL",
              help="A model file you have, or an http(s) URL to download it from.")
@click.option("--force", is_flag=True,
              help="Install even when a verified copy is already there.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
def install_model(name: str, source: str, force: bool, progress: bool | None) -> None:
    """Install a model from a file or URL, md5 checked.

    The file becomes visible only once its md5 matches the official one; a
    mismatch is refused and nothing is installed.
    """
    show = sys.stderr.isatty() if progress is None else progress
    if is_url(source):
        click.echo(f"bgrm: downloading {name} from {source}", err=True)
    done = install(name, source, force=force, progress=show)
    if done.already:
        click.echo(f"bgrm: {name} is already installed and verified: {done.path} "
                   "(--force to replace it)", err=True)
    else:
        click.echo(f"bgrm: installed {name} ({_size(done.size)}, md5 {done.md5} ok): "
                   f"{done.path}", err=True)
