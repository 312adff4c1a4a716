"""The one plan of a run: the run settings' table, the command line's and the
service's options built from it, and what `plan` decides for each door."""

from __future__ import annotations

import dataclasses
import os

import pytest

from bgrm.batch import output_name
from bgrm.cli import cli
from bgrm.models import resolve
from bgrm.options import ImageOptions, MattingOptions, VideoOptions
from bgrm.plan import executor, plan
from bgrm.run.local import Inline, Threads
from bgrm.settings import SETTINGS, RunSettings


def _option_names(command: str) -> set[str]:
    return {p.name for p in cli.commands[command].params}


def test_the_table_is_the_settings_and_every_door_offers_its_rows():
    assert [f.name for f in dataclasses.fields(RunSettings)] == [s.name for s in SETTINGS]
    for command in ("image", "video"):
        assert {s.name for s in SETTINGS} <= _option_names(command)
    served = {s.name for s in SETTINGS if s.serve}
    assert served <= _option_names("serve")
    assert not ({s.name for s in SETTINGS} - served) & _option_names("serve")
    values = {"threads": 3, "engine": "onnxruntime", "as_json": True}
    assert RunSettings.take(values) == RunSettings(threads=3, engine="onnxruntime")
    assert values == {"as_json": True}  # what is not a setting stays


def test_the_service_runs_one_file_at_a_time_without_spinning(fixtures):
    model = resolve("u2netp")
    files = [fixtures / "chelsea.png", fixtures / "coffee.png"]
    matting = ImageOptions(matting=MattingOptions(enabled=True))
    cli_plan = plan("image", matting, model, files, RunSettings())
    served = plan("image", matting, model, files, RunSettings(), long_lived=True)
    assert served.file_threads == 1 and not served.runtime.spinning
    assert served.runtime.threads == (os.cpu_count() or 1)
    if (os.cpu_count() or 1) >= 2:  # matting gives the command two files at once
        assert cli_plan.file_threads == 2 and cli_plan.runtime.threads == 1
    plain = plan("image", ImageOptions(), model, files[:1], RunSettings())
    assert plain.runtime.spinning and plain.file_threads == 1
    for long_lived in (False, True):
        video = plan("video", VideoOptions(), model, files[:1],
                     RunSettings(processes=2 if long_lived else None), long_lived=long_lived)
        assert not video.runtime.spinning and video.runtime.threads >= 1
    with_jobs = plan("image", ImageOptions(), model, files, RunSettings(processes=2),
                     long_lived=True)
    assert RunSettings(processes=2).workers == 2
    assert RunSettings(processes=2, scheduler="tcp://h:1").workers == 1
    assert with_jobs.runtime.threads == max(1, (os.cpu_count() or 1) // 2)


def test_executors_by_door():
    say = print
    assert isinstance(executor(RunSettings(), 1, say=say), Inline)
    assert isinstance(executor(RunSettings(), 3, 2, say=say), Threads)
    # The service's runner is never on the main thread, where Inline times out.
    served = executor(RunSettings(timeout=5), 1, long_lived=True, say=say)
    assert isinstance(served, Threads) and served.width == 1 and served.timeout == 5


@pytest.mark.parametrize("taken, expected", [
    (set(), "cat_processed.png"),
    ({"cat_processed.png"}, "cat_processed_2.png"),
    ({"cat_processed.png", "cat_processed_2.png"}, "cat_processed_3.png"),
])
def test_one_naming_rule(taken, expected):
    assert output_name("cat", "png", taken.__contains__) == expected
    assert output_name("clip", "", set().__contains__) == "clip_processed"


@pytest.mark.parametrize("flag", ["--workers", "-w", "--jobs", "-j"])
def test_workers_is_also_jobs(flag):
    ctx = cli.commands["image"].make_context("image", ["photo.jpg", flag, "2"])
    assert RunSettings.take(dict(ctx.params)).processes == 2
