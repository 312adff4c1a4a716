"""The API's parameters: defaults, ranges, and the params dict validated like the flags.

In-process and fast: no model is loaded here.
"""

from __future__ import annotations

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgrm.cli import image as image_command
from bgrm.errors import ExitStatus, ParameterError
from bgrm.options import (
    PARAM_BY_NAME,
    ImageOptions,
    MattingOptions,
    from_params,
    params_for,
    parse_color,
)

# The API's table (SPEC.md), name -> default.
API_IMAGE_DEFAULTS = {
    "model": None,  # u2net when installed, else the bundled u2netp (models.resolve)
    "alpha_matting": False,
    "alpha_fg": 240,
    "alpha_bg": 10,
    "alpha_erode": 10,
    "alpha_base_size": 1000,
    "only_mask": False,
    "bg_type": "transparent",
    "bg_color_value": (255, 255, 255),
}
RANGES = {"alpha_fg": (0, 255), "alpha_bg": (0, 255), "alpha_erode": (1, 25),
          "alpha_base_size": (64, 8000)}


def click_option(name: str) -> click.Option:
    return next(p for p in image_command.params if p.name == name)


def accepted_by_click(name: str, value) -> bool:
    try:
        click_option(name).type.convert(value, click_option(name), None)
    except click.BadParameter:
        return False
    return True


def accepted_by_params(name: str, value) -> bool:
    try:
        from_params("image", {name: value})
    except ParameterError:
        return False
    return True


def test_every_api_image_parameter_has_its_default_and_a_flag():
    names = {p.name for p in params_for("image")}
    assert set(API_IMAGE_DEFAULTS) <= names
    flags = {opt for p in image_command.params for opt in p.opts}
    for name, default in API_IMAGE_DEFAULTS.items():
        assert PARAM_BY_NAME[name].default == default, name
        assert "--" + name.replace("_", "-") in flags
    assert "--bg-image" in flags
    defaults = from_params("image", {})
    assert defaults == ImageOptions()
    assert defaults.matting == MattingOptions(False, 240, 10, 10, 1000)


def test_the_migration_example_from_the_spec():
    opts = from_params("image", {"convert_to": "image-backgroundremover", "model": "u2net",
                                 "alpha_matting": "true", "alpha_fg": "240", "lang": "ms"})
    assert opts.model == "u2net"
    assert opts.matting == MattingOptions(enabled=True, fg=240, bg=10, erode=10, base_size=1000)


def test_string_and_typed_values_give_the_same_options():
    strings = {"alpha_matting": "true", "alpha_fg": "200", "alpha_bg": "20", "alpha_erode": "5",
               "alpha_base_size": "640", "only_mask": "false", "bg_type": "color",
               "bg_color_value": "#00ff00"}
    typed = {"alpha_matting": True, "alpha_fg": 200, "alpha_bg": 20, "alpha_erode": 5,
             "alpha_base_size": 640, "only_mask": False, "bg_type": "color",
             "bg_color_value": "00FF00"}
    a, b = from_params("image", strings), from_params("image", typed)
    assert a == b
    assert a.matting == MattingOptions(True, 200, 20, 5, 640)
    assert a.bg_color == (0, 255, 0)


@pytest.mark.parametrize("value", ["true", "True", "1", "yes", "on", True, 1])
def test_true_spellings(value):
    assert from_params("image", {"alpha_matting": value}).matting.enabled is True


@pytest.mark.parametrize("value", ["false", "0", "no", "off", False, 0, ""])
def test_false_spellings(value):
    assert from_params("image", {"alpha_matting": value}).matting.enabled is False


def test_an_integral_float_is_an_integer_but_a_fraction_is_not():
    assert from_params("image", {"alpha_fg": 200.0}).matting.fg == 200
    with pytest.raises(ParameterError, match="alpha_fg"):
        from_params("image", {"alpha_fg": 200.5})


@pytest.mark.parametrize(("params", "words"), [
    ({"alpha_fg": "256"}, ["alpha_fg", "--alpha-fg", "0-255"]),
    ({"alpha_fg": -1}, ["alpha_fg", "0-255"]),
    ({"alpha_bg": "300"}, ["alpha_bg", "--alpha-bg", "0-255"]),
    ({"alpha_bg": "ten"}, ["alpha_bg", "0-255"]),
    ({"alpha_erode": 0}, ["alpha_erode", "--alpha-erode", "1-25"]),
    ({"alpha_erode": "26"}, ["alpha_erode", "1-25"]),
    ({"alpha_base_size": "10"}, ["alpha_base_size", "--alpha-base-size", "64"]),
    ({"alpha_fg": True}, ["alpha_fg"]),  # JSON true is not the number 1 here
    ({"alpha_matting": "maybe"}, ["alpha_matting", "true or false"]),
    ({"only_mask": "2"}, ["only_mask", "true or false"]),
    ({"bg_type": "blue"}, ["bg_type", "transparent, color, image"]),
    ({"bg_color_value": "#12345"}, ["bg_color_value", "hex"]),
    ({"bg_color_value": "green"}, ["bg_color_value", "hex"]),
    ({"convert_to": "video-backgroundremover"}, ["convert_to", "image-backgroundremover"]),
    ({"video_format": "gif"}, ["unknown parameter", "video_format"]),
    ({"alpha_fgg": "1"}, ["unknown parameter", "alpha_fgg", "alpha_fg"]),
    ({"bg_type": "image"}, ["--bg-image"]),
    ({"bg_type": "image", "bg_image": "no/such/file.jpg"}, ["bg_image", "no such file"]),
    ({"only_mask": "true", "bg_type": "color"}, ["only_mask", "color"]),
])
def test_bad_values_are_usage_errors_that_say_what_is_allowed(params, words):
    with pytest.raises(ParameterError) as info:
        from_params("image", params)
    assert info.value.exit_status == ExitStatus.USAGE == 2
    for word in words:
        assert word in str(info.value)


def test_bg_image_without_bg_type_image_is_refused(tmp_path):
    picture = tmp_path / "beach.jpg"
    picture.write_bytes(b"x")
    with pytest.raises(ParameterError, match="--bg-type image"):
        from_params("image", {"bg_image": str(picture)})
    opts = from_params("image", {"bg_type": "image", "bg_image": str(picture)})
    assert opts.bg_image == picture


def test_flags_given_on_the_command_line_win_over_the_params_dict():
    opts = from_params("image", {"alpha_fg": "100", "alpha_matting": "true", "bg_type": "color",
                                 "bg_color_value": "#ff0000"},
                       {"alpha_fg": 200, "alpha_matting": False,
                        "bg_color_value": (0, 0, 255)})
    assert opts.matting.fg == 200 and opts.matting.enabled is False
    assert opts.bg_type == "color" and opts.bg_color == (0, 0, 255)


@given(name=st.sampled_from(sorted(RANGES)), value=st.integers(-1000, 10000),
       as_text=st.booleans())
def test_params_dict_and_flags_accept_exactly_the_same_integers(name, value, as_text):
    lo, hi = RANGES[name]
    raw = str(value) if as_text else value
    assert accepted_by_params(name, raw) == (lo <= value <= hi)
    assert accepted_by_click(name, str(value)) == (lo <= value <= hi)


@given(st.one_of(st.text(max_size=8), st.from_regex(r"#?[0-9a-fA-F]{3,6}", fullmatch=True)))
def test_params_dict_and_flag_accept_the_same_colours(text):
    if text.strip():  # an empty value in the dict means "the default"
        assert accepted_by_params("bg_color_value", text) == accepted_by_click(
            "bg_color_value", text)


@pytest.mark.parametrize(("text", "rgb"), [
    ("#ffffff", (255, 255, 255)), ("00ff00", (0, 255, 0)), ("#0F0", (0, 255, 0)),
    (" #123456 ", (0x12, 0x34, 0x56)), ((1, 2, 3), (1, 2, 3)),
])
def test_colours(text, rgb):
    assert parse_color(text) == rgb


@pytest.mark.parametrize("text", ["", "#", "#ff", "#ggg", "ff00ff00", "rgb(0,0,0)",
                                  (1, 2), (0, 0, 256), (True, 0, 0)])
def test_not_colours(text):
    with pytest.raises(ParameterError):
        parse_color(text)


def test_options_are_immutable():
    opts = ImageOptions()
    with pytest.raises(AttributeError):
        opts.bg_type = "color"  # type: ignore[misc]
