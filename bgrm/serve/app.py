"""The routes: the hosted API's ``/v1/convert/`` and ``/v1/results/``, the result
files, ``/health``, and the page at ``/``.

Handlers only parse and answer: uploads stream to disk (``upload``), the
database is read on worker threads, and model work runs on the runner's thread
(``jobs.Service``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import shutil
import uuid as uuidlib
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from bgrm.errors import BgrmError
from bgrm.serve import openapi
from bgrm.serve.jobs import BACKGROUND_FIELDS, Service
from bgrm.serve.units import show_size
from bgrm.serve.upload import NO_SPACE, Allowance, FormError, read_form
from bgrm.version import __version__

STATIC = Path(__file__).resolve().parent / "static"
MAX_SMALL_BODY = 64 * 1024  # a /v1/results/ request: a uuid
# A multipart body's own bytes beyond its files: boundaries, part headers, the
# parameters (at most 64 KiB each, and there are few).
FORM_OVERHEAD = 1 << 20
# Python's mimetypes does not know every output format on every system.
MEDIA_TYPES = {".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg",
               ".gif": "image/gif", ".mov": "video/quicktime", ".mp4": "video/mp4",
               ".webm": "video/webm", ".html": "text/html; charset=utf-8",
               ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".svg": "image/svg+xml"}
FALLBACK_PAGE = """<!doctype html><meta charset="utf-8"><title>bgrm serve</title>
<p>bgrm serve is running. POST files to <code>/v1/convert/</code>, poll
<code>/v1/results/</code> with the uuid.</p>"""


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def convert(request: Request) -> Response:
    answer = await _convert(request)
    if answer.status_code >= 400:
        request.app.state.service.metrics.refused.labels(str(answer.status_code)).inc()
    return answer


async def _convert(request: Request) -> Response:
    service, api_key = request.app.state.service, request.app.state.api_key
    if api_key is not None and not _key_ok(request, api_key):
        return error(401, "missing or wrong API key: send the header Authorization: KEY")
    limits = service.limits
    room = await anyio.to_thread.run_sync(service.room)
    declared = _content_length(request)
    # Refused before a byte of the body is read (curl, sending "Expect: 100-continue",
    # then sends nothing); the files themselves are counted as they arrive.
    if declared is not None and declared > limits.max_upload + FORM_OVERHEAD:
        return error(413, f"this request is {show_size(declared)}, over this server's "
                          f"--max-upload of {show_size(limits.max_upload)}")
    if room < 0 or declared is not None and declared > room:
        return error(507, NO_SPACE)
    allowance = Allowance(limits.max_upload, limits.max_files, service.room,
                          uncounted=BACKGROUND_FIELDS)
    key, folder = await anyio.to_thread.run_sync(service.new_folder)
    try:
        form = await read_form(request, folder / "in", allowance)
        await anyio.to_thread.run_sync(service.accept, key, folder, form)
    except FormError as exc:
        return error(exc.status, str(exc))
    except BgrmError as exc:
        return error(400, service.scrub(str(exc)))
    except ClientDisconnect:
        return Response(status_code=400)
    finally:
        if service.store.job(key) is None:  # refused or cut short: nothing is kept
            shutil.rmtree(folder, ignore_errors=True)
    return JSONResponse({"uuid": key})


async def results(request: Request) -> Response:
    key = await _uuid_of(request)
    if key is None:
        return error(400, "uuid: required (form field, JSON key or query parameter)")
    # On the loop: a read of the database (a few hundred microseconds), never a wait
    # for a write; a hop to a worker thread costs more than that on busy cores.
    answer = request.app.state.service.answer(key) if _is_uuid(key) else None
    if answer is None:
        return error(404, "no job with this uuid (unknown, or its results expired)")
    return JSONResponse(answer)


def download(request: Request) -> Response:
    key, number = request.path_params["uuid"], request.path_params["number"]
    found = request.app.state.service.download(key, number) if _is_uuid(key) else None
    if found is None:
        return error(404, "no such result (unknown, not finished, or expired)")
    path, filename = found
    return FileResponse(path, filename=filename, media_type=MEDIA_TYPES.get(path.suffix.lower()))


def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__,
                         "queued": request.app.state.service.store.queued()})


async def ready(request: Request) -> Response:
    """Readiness: the runner up, the database writable, the data dir held."""
    why = await anyio.to_thread.run_sync(request.app.state.service.readiness)
    if why is not None:
        return JSONResponse({"status": "unavailable", "reason": why}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    body, ctype = await anyio.to_thread.run_sync(request.app.state.service.metrics.render)
    return Response(body, media_type=ctype)


def openapi_json(request: Request) -> Response:
    service = request.app.state.service
    return JSONResponse(openapi.document(service.model_choices(), __version__))


def index(request: Request) -> Response:
    page = STATIC / "index.html"
    if page.is_file():
        return FileResponse(page, media_type=MEDIA_TYPES[".html"])
    return HTMLResponse(FALLBACK_PAGE)


def static(request: Request) -> Response:
    name = request.path_params["name"]
    path = STATIC / name
    # One plain name in the folder: no '..', no sub-folders, no hidden files.
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name) or not path.is_file() \
            or not path.resolve().is_relative_to(STATIC):
        return error(404, "not found")
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower()))


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    service = app.state.service
    await anyio.to_thread.run_sync(service.start)
    expiring = asyncio.create_task(_expire_every(service, app.state.keep))
    app.state.on_ready()
    try:
        yield
    finally:
        expiring.cancel()
        await anyio.to_thread.run_sync(service.close, 5.0)


ROUTES = [
    Route("/v1/convert/", convert, methods=["POST"]),
    Route("/v1/convert", convert, methods=["POST"]),
    Route("/v1/results/", results, methods=["POST", "GET"]),
    Route("/v1/results", results, methods=["POST", "GET"]),
    Route("/v1/files/{uuid}/{number:int}/{filename}", download, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/", index, methods=["GET"]),
    Route("/static/{name}", static, methods=["GET"]),
]


def create_app(service: Service, api_key: str | None, keep: float,
               on_ready=lambda: None) -> Starlette:
    """The ASGI app over ``service``; ``keep``: seconds a finished job's results stay."""
    app = Starlette(routes=ROUTES, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _internal_error})
    app.state.service, app.state.api_key, app.state.keep = service, api_key, keep
    app.state.on_ready = on_ready
    return app


async def _expire_every(service: Service, keep: float) -> None:
    # Each pass is one query when nothing is due; a job outlives --keep by 1/60 of it.
    period = min(60.0, max(1.0, keep / 60))
    while True:
        try:
            await anyio.to_thread.run_sync(service.expire, keep)
        except Exception as exc:  # noqa: BLE001 - said; the next pass tries again
            service.say(f"expiring old jobs failed: {type(exc).__name__}: "
                        f"{service.scrub(str(exc))}")
        await asyncio.sleep(period)


def _key_ok(request: Request, api_key: str) -> bool:
    # The hosted API's clients send the bare key; "Bearer KEY" (any case) is taken too.
    # Headers are bytes: Starlette decodes them as latin-1, which gives them back
    # as sent, to be compared with the key's UTF-8 bytes.
    sent = request.headers.get("authorization", "").encode("latin-1").strip()
    scheme, _, rest = sent.partition(b" ")
    if scheme.lower() == b"bearer" and rest.strip():
        sent = rest.strip()
    return hmac.compare_digest(sent, api_key.encode("utf-8"))


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _is_uuid(text: str) -> bool:
    try:
        return str(uuidlib.UUID(text)) == text
    except ValueError:
        return False


async def _uuid_of(request: Request) -> str | None:
    """The uuid from a form (urlencoded or multipart), a JSON body or the query."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    value = request.query_params.get("uuid")
    if request.method == "POST" and ctype in ("multipart/form-data",
                                               "application/x-www-form-urlencoded"):
        async with request.form(max_files=0, max_fields=100, max_part_size=MAX_SMALL_BODY) \
                as form:
            value = form.get("uuid", value)
    elif request.method == "POST" and ctype == "application/json":
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_SMALL_BODY:
                return None
        with contextlib.suppress(ValueError):
            data = json.loads(body)
            value = data.get("uuid", value) if isinstance(data, dict) else value
    return value.strip() if isinstance(value, str) and value.strip() else None


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return error(exc.status_code, exc.detail or "error")


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error(500, "internal error")
