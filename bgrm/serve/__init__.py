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
import socket
from pathlib import Path

from bgrm.errors import ParameterError

INSTALL_HINT = "pip install 'bgrm[serve]'"


def require() -> None:
    """A usage error saying what to install when the extra is missing."""
    missing = []
    for module in ("starlette", "uvicorn", "python_multipart"):
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


def parse_duration(text: str) -> float:
    """'24h', '30m', '90s', '2d' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
    if not m:
        raise ParameterError(f"--keep {text!r}: a duration like 24h, 30m, 90s or 2d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


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


def run(*, host: str, port: int, api_key: str | None, data_dir: Path | None, keep: float,
        settings, say) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    require()
    if not api_key and not is_loopback(host):
        raise ParameterError(f"--host {host} is reachable from other machines, and no API key "
                             "is set: anyone there could run jobs on this one. Set one with "
                             "--api-key KEY or BGRM_API_KEY, or serve on 127.0.0.1")
    import uvicorn

    from bgrm.serve.app import create_app
    from bgrm.serve.jobs import Service

    sock = bind(host, port)
    root = data_dir or default_data_dir()
    try:
        service = Service(root, settings, say)
    except OSError as exc:
        raise ParameterError(f"--data-dir {root}: cannot use it: {exc.strerror or exc}") from None
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
    uvicorn.Server(config).run(sockets=[sock])
