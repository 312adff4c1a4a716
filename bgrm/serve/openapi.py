"""The service's OpenAPI 3.1 document, generated from the one parameter table.

Every form field of ``/v1/convert/`` that selects something is a row of
``bgrm.options.PARAMS``: its schema here (type, range, choices, default) and its
description (the row's help) come from that row, so the document cannot drift
from what the service accepts. The models a request may name are the caller's:
names and short facts (family, licence, status), never where their files are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bgrm.options import (
    CONVERT_TO,
    EDGE_ORDER,
    FOLDER_FORMATS,
    HEX_COLOR_PATTERN,
    PARAM_BY_NAME,
    PARAMS,
    Param,
)

OPENAPI_VERSION = "3.1.0"
# The facts of a model a client may see; anything else the caller passes (a path,
# a checksum) stays out of the document.
MODEL_FACTS = ("family", "licence", "status")
# Notes a row's help (written for the command line) needs in the service.
SERVICE_NOTES = {
    "model_family": "The service runs named models only, each with its own family: a "
                    "value here must be that model's family.",
}
# Choices that write a folder of files: the service refuses them, its enum leaves them out.
FOLDER_CHOICES = {"video_format": FOLDER_FORMATS}
BINARY = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
RESULT_TYPES = ("image/png", "image/webp", "image/jpeg", "image/gif", "video/quicktime",
                "video/mp4", "video/webm")
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)")
_DEFAULT_NOTE = re.compile(r"\s*\[default: ([^\]]*)\]\s*$")


def document(models: Mapping[str, Mapping[str, str]], version: str,
             extra_inputs: bool = True) -> dict:
    """The OpenAPI 3.1 document of ``bgrm serve``, a JSON-serialisable dict.

    ``models``: the model names a request may send (the ``model`` parameter's
    enum), each with short facts for people (``family``, ``licence``,
    ``status``: installed, bundled or operator); other keys are left out.
    ``version``: the server's version. ``extra_inputs``: whether the service
    takes ``image_url`` (fetched by the server) and ``webhook_url``.
    """
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "bgrm serve",
            "version": version,
            "summary": "Offline background removal for images and videos, served as the "
                       "hosted Background Remover API's REST interface.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": {
            "/v1/convert/": {"post": _convert(models, extra_inputs)},
            "/v1/results/": _results(),
            "/v1/files/{uuid}/{number}/{filename}": {"get": _download()},
            "/health": {"get": _health()},
            "/ready": {"get": _ready()},
            "/metrics": {"get": _metrics()},
            "/openapi.json": {"get": _self()},
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"apiKey": {
                "type": "apiKey", "in": "header", "name": "Authorization",
                "description": "The server's API key, bare (`Authorization: KEY`, as the "
                               "hosted API's clients send it) or as `Bearer KEY`. Needed "
                               "only when the server was started with --api-key."}},
        },
    }


# -- /v1/convert/ -----------------------------------------------------------------------


def _convert(models: Mapping[str, Mapping[str, str]], extra_inputs: bool) -> dict:
    form = _convert_form(models, extra_inputs)
    operation = {
        "operationId": "convert",
        "summary": "Queue files for background removal",
        "description": (
            "Uploads files (multipart/form-data) with the parameters as form fields; "
            "answers the job's uuid once the files are on disk. Poll /v1/results/ with it. "
            "At least one input: a file in any file field"
            + (", or an image_url. " if extra_inputs else ". ") +
            "Form values are strings on the wire ('true', '240', '#00ff00'); the schemas "
            "give the type each must read as. Also served at /v1/convert (no slash). "
            f"The edge steps always run in this order: {EDGE_ORDER}."),
        "security": [{"apiKey": []}, {}],
        "requestBody": {"required": True, "content": {"multipart/form-data": form}},
        "responses": {
            "200": _json("The job is queued.", {"$ref": "#/components/schemas/Queued"}),
            "400": _error_response("A parameter, a combination of them, or the form is "
                                   "refused, or no input was sent; `error` names the "
                                   "parameter and what it allows."),
            "401": _error_response("Missing or wrong API key."),
            "413": _error_response("The upload is too large for the server's limits, or it "
                                   "has no room to store it."),
            "507": _error_response("The server's storage is full."),
        },
    }
    if extra_inputs:
        operation["callbacks"] = {"finished": {"{$request.body#/webhook_url}": {
            "post": _webhook()}}}
    return operation


def _convert_form(models: Mapping[str, Mapping[str, str]], extra_inputs: bool) -> dict:
    """The multipart form's schema: the request's own fields, then every PARAMS row."""
    fields: dict[str, Any] = {
        "convert_to": {"type": "string", "enum": list(CONVERT_TO.values()),
                       "description": "The job: " + ", ".join(
                           f"{value} ({job}s)" for job, value in CONVERT_TO.items()) + "."},
        "lang": {"type": "string", "description": "Accepted and ignored (the hosted API's "
                                                  "clients send it)."},
        "files": {"type": "array", "items": BINARY,
                  "description": "The pictures or videos, several per request. Any file "
                                 "field name works: files, or file[0], file[1]... as the "
                                 "hosted API's PHP client sends them."},
    }
    if extra_inputs:
        fields["image_url"] = {
            "type": "array", "items": {"type": "string", "format": "uri"},
            "description": "http(s) URLs of pictures, repeatable, fetched by the server "
                           "(with a size limit and a timeout; hosts on private addresses "
                           "are refused unless the operator allows them)."}
        fields["webhook_url"] = {
            "type": "string", "format": "uri",
            "description": "An http(s) URL the server POSTs the results object to when the "
                           "job finishes (see the callback `finished`), retried until the "
                           "results expire."}
    for param in PARAMS:
        fields[param.name] = param_schema(param, models)
    return {
        "schema": {"type": "object", "required": ["convert_to"], "properties": fields,
                   "additionalProperties": {**BINARY, "description": "A file in any "
                                            "other field is one more input."}},
        "encoding": {"files": {"contentType": "image/*, video/*, application/octet-stream"}},
    }


def param_schema(param: Param, models: Mapping[str, Mapping[str, str]]) -> dict:
    """One PARAMS row as a form field's schema: type, range, choices, default, help."""
    if param.kind == "path":  # a background is an upload, never a name on the server
        schema = dict(BINARY)
    elif param.kind == "model":
        schema = {"type": "string", "enum": list(models)}
    else:
        schema = _typed(param)
    default = wire_default(param)
    if default is not None:
        schema["default"] = default
    schema["description"] = _description(param, models)
    schema["x-bgrm-jobs"] = list(param.jobs)
    return schema


def _typed(param: Param) -> dict:
    if param.kind == "bool":
        return {"type": "boolean"}
    if param.kind == "int":
        schema: dict[str, Any] = {"type": "integer"}
        if param.lo is not None:
            schema["minimum"] = param.lo
        if param.hi is not None:
            schema["maximum"] = param.hi
        return schema
    if param.kind == "choice":
        refused = FOLDER_CHOICES.get(param.name, ())
        return {"type": "string", "enum": [c for c in param.choices if c not in refused]}
    if param.kind == "color":
        return {"type": "string", "pattern": HEX_COLOR_PATTERN}
    if param.kind == "float":
        return {"type": "number"}
    raise ValueError(f"{param.name}: no schema for a parameter of kind {param.kind!r}")


def wire_default(param: Param) -> Any:
    """The row's default as a client would send it (a colour as '#rrggbb'); None: none."""
    if param.default is None or param.kind in ("path", "model"):
        return None
    if param.kind == "color":
        return "#" + "".join(f"{c:02x}" for c in param.default)
    return param.default


def _description(param: Param, models: Mapping[str, Mapping[str, str]]) -> str:
    parts = [api_text(param.help)]
    if param.kind == "model":
        # The row's help names files too; a request can only name these models.
        note = _DEFAULT_NOTE.search(param.help)
        parts = ["A model by name (a request cannot name a file on the server): " + "; ".join(
            _model_line(name, info) for name, info in models.items())]
        if note:
            parts.append(f"[default: {note.group(1)}]")
    if param.name in SERVICE_NOTES:
        parts.append(SERVICE_NOTES[param.name])
    if param.name in FOLDER_CHOICES:
        parts.append(", ".join(FOLDER_CHOICES[param.name]) + " is not served: it writes a "
                     "folder of files, which cannot be sent as one download")
    if param.kind == "path":
        parts.append("Sent as a file upload in this field")
    parts.append(f"Applies to: {jobs_text(param.jobs)}")
    return " ".join(part if part.endswith(".") else part + "." for part in parts)


def _model_line(name: str, info: Mapping[str, str]) -> str:
    facts = [f"{key} {info[key]}" if key != "status" else str(info[key])
             for key in MODEL_FACTS if info.get(key)]
    return f"{name} ({', '.join(facts)})" if facts else name


def api_text(text: str) -> str:
    """A help text written for the command line, with each parameter's flag
    (--bg-type) written as its form field's name (bg_type)."""
    def field(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        return name if name in PARAM_BY_NAME else match.group(0)

    return _FLAG.sub(field, text)


def jobs_text(jobs: tuple[str, ...]) -> str:
    """'image and video', or 'video only (convert_to=video-backgroundremover)'."""
    if set(jobs) >= set(CONVERT_TO):
        return " and ".join(CONVERT_TO)
    return " and ".join(jobs) + " only (convert_to=" + ", ".join(
        CONVERT_TO[job] for job in jobs) + ")"


def _webhook() -> dict:
    return {
        "summary": "The job's results, POSTed to webhook_url when it finishes",
        "description": "Signed when the server has an API key: X-Bgrm-Signature is "
                       "sha256=<hex HMAC-SHA256 of the exact body, keyed by the API key>. "
                       "Any 2xx is delivered; 5xx, 408, 429 or no answer is retried with "
                       "backoff until the results expire; another 4xx gives up.",
        "parameters": [
            {"name": "X-Bgrm-Job", "in": "header", "required": True,
             "schema": {"type": "string", "format": "uuid"}, "description": "The job's uuid."},
            {"name": "X-Bgrm-Signature", "in": "header", "required": False,
             "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"}},
        ],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Results"}}}},
        "responses": {"2XX": {"description": "Delivered."}},
    }


# -- results, files, health -------------------------------------------------------------


def _results() -> dict:
    uuid_form = {"type": "object", "required": ["uuid"],
                 "properties": {"uuid": {"type": "string", "format": "uuid"}}}
    answers = {
        "200": _json("The job's results so far.", {"$ref": "#/components/schemas/Results"}),
        "400": _error_response("No uuid was sent."),
        "404": _error_response("No job with this uuid (unknown, or its results expired)."),
    }
    about = ("The results object of a job: finished files (each with a download url), "
             "failed ones, and progress. No API key: the random uuid guards a job. Also "
             "served at /v1/results (no slash).")
    return {
        "post": {"operationId": "results", "summary": "A job's results", "description": about,
                 "requestBody": {"required": True, "content": {
                     media: {"schema": uuid_form} for media in (
                         "multipart/form-data", "application/x-www-form-urlencoded",
                         "application/json")}},
                 "responses": answers},
        "get": {"operationId": "resultsByQuery", "summary": "A job's results",
                "description": about,
                "parameters": [{"name": "uuid", "in": "query", "required": True,
                                "schema": {"type": "string", "format": "uuid"}}],
                "responses": answers},
    }


def _download() -> dict:
    def path_param(name: str, schema: dict, about: str) -> dict:
        return {"name": name, "in": "path", "required": True, "schema": schema,
                "description": about}

    body = {media: {"schema": BINARY} for media in RESULT_TYPES}
    return {
        "operationId": "download",
        "summary": "A finished result file",
        "description": "The url of a files entry of the results object. Range requests "
                       "are answered with 206 and the part asked for.",
        "parameters": [
            path_param("uuid", {"type": "string", "format": "uuid"}, "The job's uuid."),
            path_param("number", {"type": "integer", "minimum": 0},
                       "The input's position in the request, from 0."),
            path_param("filename", {"type": "string"}, "The result's file name."),
            {"name": "Range", "in": "header", "required": False,
             "schema": {"type": "string"}, "description": "e.g. bytes=0-1023"},
        ],
        "responses": {
            "200": {"description": "The whole file.", "content": body},
            "206": {"description": "The range asked for.", "content": body},
            "404": _error_response("No such result (unknown, not finished, or expired)."),
            "416": {"description": "The range is outside the file."},
        },
    }


def _health() -> dict:
    schema = {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "const": "ok"},
        "version": {"type": "string"},
        "queued": {"type": "integer", "minimum": 0,
                   "description": "Files waiting or under way."}}}
    return {"operationId": "health", "summary": "Liveness: the server answers",
            "responses": {"200": _json("Alive.", schema)}}


def _ready() -> dict:
    schema = {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string"},
        "reason": {"type": "string", "description": "Why it is not ready, when it is not."}}}
    return {"operationId": "ready", "summary": "Readiness: the server takes new jobs",
            "responses": {"200": _json("Ready to take jobs.", schema),
                          "503": _json("Not ready; `reason` says why.", schema)}}


def _metrics() -> dict:
    return {"operationId": "metrics", "summary": "Metrics in Prometheus' text format",
            "responses": {"200": {"description": "Prometheus exposition format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}


def _self() -> dict:
    return {"operationId": "openapi", "summary": "This document",
            "responses": {"200": _json("The OpenAPI document.", {"type": "object"})}}


def _schemas() -> dict:
    text = {"type": "string"}
    crop = {"type": "object", "description": "The subject's box in the input, with crop.",
            "properties": {k: {"type": "integer", "minimum": 0}
                           for k in ("x", "y", "width", "height")}}
    done = {"type": "object", "required": ["url", "filename"], "properties": {
        "url": {"type": "string", "description": "Where to download it (a path on this "
                                                 "server)."},
        "filename": text, "crop": crop}}
    failed = {"type": "object", "required": ["filename", "error"],
              "properties": {"filename": text, "error": text}}
    count = {"type": "integer", "minimum": 0}
    progress = {"type": "object", "properties": {
        "files": {**count, "description": "Files in the job."},
        "done": {**count, "description": "Files finished or failed."},
        "frames": {**count, "description": "Video frames done so far."}}}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": text}},
        "Queued": {"type": "object", "required": ["uuid"],
                   "properties": {"uuid": {"type": "string", "format": "uuid"}}},
        "Results": {"type": "object", "required": ["files", "failed", "errors", "finished",
                                                   "queue_count"], "properties": {
            "files": {"type": "array", "items": done},
            "failed": {"type": "array", "items": failed},
            "errors": {"type": "array", "items": text},
            "finished": {"type": "boolean"},
            "queue_count": {**count, "description": "Jobs ahead of this one."},
            "progress": progress}},
    }


def _json(about: str, schema: dict) -> dict:
    return {"description": about, "content": {"application/json": {"schema": schema}}}


def _error_response(about: str) -> dict:
    return _json(about, {"$ref": "#/components/schemas/Error"})
