"""``bgrm models``: see, verify and install the models bgrm knows by name.

Imports only click and bgrm.models (hashlib, json), so ``bgrm --help`` stays light;
tqdm and urllib are imported by ``install`` when it runs.
"""

from __future__ import annotations

import json
import sys

import click

from bgrm.errors import ExitStatus
from bgrm.models import REGISTRY, install, is_url, models_dir, status
from bgrm.models.store import mismatch


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _licence(text: str) -> str:
    """The licence's name without its explanation, for the table."""
    return text.split(" (", 1)[0].split(":", 1)[0]


@click.group()
def models():
    """See, verify and install models (U^2-Net, IS-Net, BiRefNet, BRIA RMBG, ViTMatte).

    Models live in $BGRM_MODELS, else $U2NET_HOME, else ~/.u2net; u2netp is
    also bundled. Only `bgrm models install` uses the network.
    """


@models.command("list", short_help="List the models: status, size, licence.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the list as JSON on stdout (with checksums, URLs, sources).")
def list_models(as_json: bool) -> None:
    """List the models: family, status (bundled, installed, missing, corrupt),
    size (approximate while missing), licence of the weights, and path.

    Check a model's licence at its source before commercial use: --json gives
    the full text and the source of each.
    """
    rows = [status(spec) for spec in REGISTRY.values()]
    if as_json:
        click.echo(json.dumps({"models_dir": str(models_dir()),
                               "models": [row.as_dict() for row in rows]}, indent=2))
        return
    click.echo(f"models directory: {models_dir()}")
    width = max(len(name) for name in REGISTRY)
    for row in rows:
        spec = row.spec
        size = _size(row.size) if row.size is not None else f"~{spec.approx_mb:.0f} MB"
        click.echo(f"{spec.name:<{width}}  {spec.family or 'vitmatte':<8}  {row.status:<9}  "
                   f"{size:>9}  {_licence(spec.licence):<13}  {row.path}")


@models.command("verify", short_help="Check model files against their official checksums.")
@click.argument("names", nargs=-1, type=click.Choice(list(REGISTRY)), metavar="[NAME]...")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.pass_context
def verify_models(ctx: click.Context, names: tuple[str, ...], as_json: bool) -> None:
    """Check model files against their official md5 or sha256 (a full read).

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
                what = f"CORRUPT  {mismatch(r.spec.checksum, r.actual_checksum)}  {r.path}"
            elif r.status == "missing":
                what = f"missing  (install: bgrm models install {r.spec.name})"
            else:
                what = f"ok       {r.status}  {r.path}"
            click.echo(f"{r.spec.name:<{width}}  {what}")
    if bad:
        ctx.exit(ExitStatus.FAILED)


@models.command("install", short_help="Install a model from its official URL, or a file or URL.")
@click.argument("name", type=click.Choice(list(REGISTRY)), metavar="NAME")
@click.option("--from", "source", metavar="PATH|URL",
              help="A model file you have, or an http(s) URL to download it from "
                   "[default: the official URL, see bgrm models list --json].")
@click.option("--force", is_flag=True,
              help="Install even when a verified copy is already there.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
def install_model(name: str, source: str | None, force: bool, progress: bool | None) -> None:
    """Install a model, checksum checked: from its official URL (rembg's release),
    or --from a file or URL you have.

    The file becomes visible only once its checksum matches the official one;
    a mismatch is refused and nothing is installed.
    """
    show = sys.stderr.isatty() if progress is None else progress
    spec = REGISTRY[name]
    url = source if source is not None and is_url(source) else None
    if source is None:
        url = spec.url
    if url is not None:
        click.echo(f"bgrm: downloading {name} (~{spec.approx_mb:.0f} MB) from {url}", err=True)
    done = install(name, source, force=force, progress=show)
    if done.already:
        click.echo(f"bgrm: {name} is already installed and verified: {done.path} "
                   "(--force to replace it)", err=True)
    else:
        click.echo(f"bgrm: installed {name} ({_size(done.size)}, {done.checksum} ok): "
                   f"{done.path}", err=True)
    if spec.family is not None and "non-commercial" in spec.licence:
        click.echo(f"bgrm: {name}'s weights are licensed {spec.licence} ({spec.source})",
                   err=True)
