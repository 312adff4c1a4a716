"""The service's OpenAPI document: valid, generated from every PARAMS row, with
ranges and choices that are exactly what the server accepts, and no server path."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

import bgrm
from bgrm.errors import ParameterError
from bgrm.models import REGISTRY, SEGMENTATION_MODELS, models_dir, status
from bgrm.options import CONVERT_TO, FOLDER_FORMATS, PARAMS, parse_color
from bgrm.report import Result, api_results
from bgrm.serve.jobs import request_options
from bgrm.serve.openapi import document

MODELS = {
    "u2netp": {"family": "u2net", "licence": "Apache-2.0", "status": "bundled"},
    "isnet-general-use": {"family": "isnet", "licence": "Apache-2.0", "status": "installed"},
    "house-model": {"family": "birefnet", "licence": "proprietary", "status": "operator"},
}
OWN_FIELDS = {"convert_to", "lang", "files"}
EXTRA_FIELDS = {"image_url", "webhook_url"}


def _form(doc: dict) -> dict:
    body = doc["paths"]["/v1/convert/"]["post"]["requestBody"]
    return body["content"]["multipart/form-data"]["schema"]["properties"]


def _strings(node):
    """Every key and string value in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("extra_inputs", [True, False])
def test_document_is_valid_openapi_and_plain_json(extra_inputs):
    doc = document(MODELS, "1.2.3", extra_inputs=extra_inputs)
    validate(doc)
    # Lists, not tuples, and nothing JSON cannot hold: it survives a round trip whole.
    assert json.loads(json.dumps(doc)) == doc
    assert doc["info"]["version"] == "1.2.3"


def test_the_form_is_every_params_row_and_the_requests_own_fields():
    assert set(_form(document(MODELS, "0"))) == {p.name for p in PARAMS} | OWN_FIELDS \
        | EXTRA_FIELDS
    plain = document(MODELS, "0", extra_inputs=False)
    assert set(_form(plain)) == {p.name for p in PARAMS} | OWN_FIELDS
    assert "callbacks" not in plain["paths"]["/v1/convert/"]["post"]
    assert "callbacks" in document(MODELS, "0")["paths"]["/v1/convert/"]["post"]


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_each_row_has_its_type_range_choices_default_help_and_jobs(param):
    field = _form(document(MODELS, "0"))[param.name]
    kinds = {"bool": "boolean", "int": "integer", "choice": "string", "color": "string",
             "float": "number", "model": "string", "path": "string"}
    assert field["type"] == kinds[param.kind]
    assert field.get("minimum") == param.lo and field.get("maximum") == param.hi
    if param.kind == "choice":
        assert field["enum"] == [c for c in param.choices if c not in FOLDER_FORMATS]
    if param.kind == "path":
        assert field["format"] == "binary"  # an upload, never a name on the server
    if param.kind == "color":
        assert parse_color(field["default"]) == param.default
    elif param.default is not None:
        assert field["default"] == param.default and type(field["default"]) is type(
            param.default)
    else:
        assert "default" not in field
    assert field["x-bgrm-jobs"] == list(param.jobs)
    jobs = "image and video" if len(param.jobs) == 2 else f"{param.jobs[0]} only"
    assert f"Applies to: {jobs}" in field["description"]
    if param.kind != "model":
        # The row's help (its flags may be written as field names).
        words = re.findall(r"[A-Za-z]{3,}", re.sub(r"--[a-z-]+", "", param.help))
        assert [w for w in words if w not in field["description"]] == []


def _samples(param) -> list:
    if param.kind == "int":
        lo = param.lo if param.lo is not None else 0
        hi = param.hi if param.hi is not None else lo + 10**9
        return [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1, 1.5, True]
    if param.kind == "choice":
        return [*param.choices, "nope", ""]
    if param.kind == "color":
        return ["#00ff00", "00FF00", "#0f0", "0f0", "#00ff0", "#00ff000", "green", "#ggg"]
    if param.kind == "bool":
        return [True, False]
    return []


@pytest.mark.parametrize("param", [p for p in PARAMS if _samples(p)], ids=lambda p: p.name)
def test_the_schema_accepts_exactly_what_the_server_accepts(param):
    """A value the document allows is one the server takes, and the other way round
    (the service's own refusals aside: a format that writes a folder)."""
    schema = _form(document(MODELS, "0"))[param.name]
    checker = Draft202012Validator(schema)
    for value in _samples(param):
        if value == "":
            continue  # an empty form field means the default
        try:
            param.convert(value if isinstance(value, str) else json.dumps(value))
            server_takes = value not in FOLDER_FORMATS
        except ParameterError:
            server_takes = False
        assert checker.is_valid(value) == server_takes, (param.name, value)


def test_a_format_the_document_leaves_out_is_refused_by_the_service():
    for fmt in FOLDER_FORMATS:
        assert fmt not in _form(document(MODELS, "0"))["video_format"]["enum"]
        with pytest.raises(ParameterError, match=fmt):
            request_options({"convert_to": CONVERT_TO["video"], "video_format": fmt}, {})


def test_convert_to_is_the_services_jobs():
    field = _form(document(MODELS, "0"))["convert_to"]
    assert field["enum"] == list(CONVERT_TO.values())
    for job, value in CONVERT_TO.items():
        assert request_options({"convert_to": value}, {})[0] == job
    with pytest.raises(ParameterError):
        request_options({"convert_to": "audio-backgroundremover"}, {})


def test_the_model_enum_is_the_names_given_with_their_facts():
    field = _form(document(MODELS, "0"))["model"]
    assert field["enum"] == list(MODELS)
    for name, info in MODELS.items():
        assert name in field["description"]
        assert all(value in field["description"] for value in info.values())
    one = _form(document({"u2netp": MODELS["u2netp"]}, "0"))["model"]
    assert one["enum"] == ["u2netp"] and "isnet" not in one["description"]


def _absolute_paths(doc: dict) -> list[str]:
    """Absolute paths anywhere in the document, the routes it documents aside."""
    routes = tuple({"/" + path.split("/")[1] for path in doc["paths"]})
    found = []
    for text in _strings(doc):
        for match in re.finditer(r"(?:^|[\s'\"(=:,])(/[^\s'\"),]*)", text):
            if not match.group(1).startswith(routes):
                found.append(match.group(1))
        found += re.findall(r"[A-Za-z]:\\[^\s]*", text)  # Windows
    return found


def test_no_server_path_even_when_the_caller_passes_one():
    # What the lead might pass: `bgrm models list --json`'s rows, paths and all.
    models = {spec.name: status(spec).as_dict() for name, spec in REGISTRY.items()
              if name in SEGMENTATION_MODELS}
    models["evil"] = {"family": "u2net", "path": "/srv/secret/evil.onnx",
                      "url": "file:///etc/passwd"}
    doc = document(models, bgrm.__version__)
    text = json.dumps(doc)
    folders = {str(models_dir()), str(Path.home()), str(Path(bgrm.__file__).parent),
               tempfile.gettempdir(), os.getcwd(), "/srv/secret", "/etc/passwd"}
    assert [f for f in folders if f in text] == []
    assert _absolute_paths(doc) == []
    assert _form(doc)["model"]["enum"] == list(models)


def test_the_path_finder_finds_paths():
    # The check above must be able to fail.
    assert _absolute_paths({"paths": {"/v1/x": {}},
                            "a": "see /home/me/x.onnx", "b": "C:\\models\\x"}) == [
        "/home/me/x.onnx", "C:\\models\\x"]


def test_a_real_results_object_fits_its_schema():
    doc = document(MODELS, "0")
    answer = api_results(
        [Result("a.jpg", Path("a_processed.png"), crop_box=(1, 2, 30, 40)),
         Result("b.jpg", error="b.jpg: not a picture")],
        url=lambda r: f"/v1/files/0/0/{r.dst.name}")
    answer.update(finished=True, queue_count=0, progress={"files": 2, "done": 2, "frames": 0})
    results = Draft202012Validator({**doc, "$ref": "#/components/schemas/Results"})
    results.validate(answer)
    del answer["failed"]
    assert not results.is_valid(answer)


def test_every_route_of_the_service_is_documented():
    from bgrm.serve.app import ROUTES

    documented = set(document(MODELS, "0")["paths"])
    for route in ROUTES:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if path in ("/", "/static/{name}") or path + "/" in documented:
            continue  # the page, and the routes' aliases without the slash
        assert path in documented
