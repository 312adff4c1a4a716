"""``bgrm serve``: the hosted API's REST interface on this machine.

``app`` has the routes, ``jobs`` turns requests into the command line's options
and tasks and keeps their state in the data dir (``store``), ``upload`` streams
multipart bodies to disk. Starlette, uvicorn and python-multipart come with the
``serve`` extra and are imported only here.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import sys
from pathlib import Path

from bgrm.errors import ParameterError

INSTALL_HINT = "pip install 'bgrm[serve]'"


def require() -> None:
    """A usage error saying what to install when the extra is missing."""
    missing = []
    for module in ("starlette", "uvicorn", "python_multipart", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module.replace("_", "-"))
    if missing:
        raise ParameterError(f"bgrm serve needs {', '.join(missing)}, which "
                             f"{'is' if len(missing) == 1 else 'are'} not installed; "
                             f"install them with: {INSTALL_HINT}")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "bgrm" / "serve"


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is this machine's loopback."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                               for i in infos)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, made before anything else: a port in use is one clear error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        raise ParameterError(f"--host {host} --port {port}: cannot listen there: "
                             f"{exc.strerror or exc}") from None


def operator_models(specs: list[tuple[str, str, Path]]) -> dict:
    """``--custom-model NAME=FAMILY:PATH`` rows -> name -> ResolvedModel, each file
    loaded once on the CPU to check it fits its family (then let go)."""
    from bgrm.errors import ModelError
    from bgrm.models import REGISTRY, resolve
    from bgrm.segment import check_model

    models = {}
    for name, family, path in specs:
        if name in REGISTRY or name in models:
            raise ParameterError(f"--custom-model {name}: that name is taken (a model of "
                                 "bgrm's own, or given twice); choose another")
        model = resolve(str(path), family)
        try:
            check_model(model)
        except ModelError as exc:
            raise ModelError(f"--custom-model {name}: {exc}") from None
        models[name] = model
    return models


def run(*, host: str, port: int, api_key: str | None, data_dir: Path | None, keep: float,
        settings, say, limits=None, custom_models=(), max_models: int = 2,
        allow_private_urls: bool = False) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    require()
    if not api_key and not is_loopback(host):
        raise ParameterError(f"--host {host} is reachable from other machines, and no API key "
                             "is set: anyone there could run jobs on this one. Set one with "
                             "--api-key KEY or BGRM_API_KEY, or serve on 127.0.0.1")
    import uvicorn

    from bgrm.segment import SEGMENTERS
    from bgrm.serve.app import create_app
    from bgrm.serve.jobs import Limits, Service

    SEGMENTERS.resize(max_models)  # the process's one cache: this is the service's door
    sock = bind(host, port)
    root = (data_dir or default_data_dir()).expanduser()
    try:
        service = Service(root, settings, say, limits or Limits(), keep=keep,
                          api_key=api_key or None, allow_private_urls=allow_private_urls)
    except OSError as exc:
        raise ParameterError(f"--data-dir {root}: cannot use it: {exc.strerror or exc}") from None
    # Checked once the data dir is held (a second server stops at once), before any
    # job of the folder is resumed.
    service.operator_models = operator_models(list(custom_models))
    where = sock.getsockname()
    shown = f"[{where[0]}]" if ":" in where[0] else where[0]

    def ready() -> None:
        say(f"serving on http://{shown}:{where[1]}/ (data in {service.root}; results kept "
            f"{keep:g} s; Ctrl-C stops)")

    app = create_app(service, api_key or None, keep, on_ready=ready)
    # Ctrl-C and SIGTERM: uvicorn stops taking requests, waits for those under way
    # (at most 5 s), then the app's shutdown stops the runner (jobs.Service.close).
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if service.abandoned:
            # A file still running on a thread past the grace: it cannot be stopped,
            # and onnxruntime aborts an interpreter that ends around its threads. Its
            # temporaries are gone and its job is queued for the next start.
            say("stopped; the files under way run again at the next start")
            sys.stderr.flush()
            os._exit(128 + signal.SIGTERM)
        say("stopped")


def parse_custom_model(text: str) -> tuple[str, str, Path]:
    """'NAME=FAMILY:PATH' -> (name, family, path), or a ParameterError saying the form."""
    from bgrm.models import FAMILIES

    name, _, rest = str(text).partition("=")
    family, _, path = rest.partition(":")
    name, family = name.strip(), family.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or not path:
        raise ParameterError(f"--custom-model {text!r}: give NAME=FAMILY:PATH (a name of "
                             "letters, digits, '.', '_' or '-'), e.g. "
                             "shoes=isnet:/srv/models/shoes.onnx")
    if family not in FAMILIES:
        raise ParameterError(f"--custom-model {text!r}: family {family!r} is not one of "
                             f"{', '.join(FAMILIES)}")
    return name, family, Path(path).expanduser()
