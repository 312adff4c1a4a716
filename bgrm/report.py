"""Per-file results and the hosted API's results object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bgrm.errors import ExitStatus


@dataclass
class Result:
    """What became of one input: an output written, or a reason it was not."""

    src: str  # the input as the user named it
    dst: Path | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    traceback: str | None = None
    skipped: bool = False  # --skip-existing found the output already there
    same_as: str | None = None  # the same file as this earlier input: processed once, there
    # Named like bgrm's own output in a folder given (why it was passed over).
    skipped_output: str | None = None
    # --crop: (left, top, right, bottom) kept, in the upright input's pixels
    crop_box: tuple[int, int, int, int] | None = None
    seconds: float | None = None  # wall time of its processing, where it ran

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Processed:
    """What a job's process_file hands back for the file it wrote."""

    notes: list[str] = field(default_factory=list)
    crop_box: tuple[int, int, int, int] | None = None


def _file_entry(r: Result, url: Callable[[Result], str]) -> dict:
    entry = {"url": url(r), "filename": r.dst.name}
    if r.crop_box is not None:
        left, top, right, bottom = r.crop_box
        entry["crop"] = {"x": left, "y": top, "width": right - left, "height": bottom - top}
    return entry


def api_results(results: list[Result], url: Callable[[Result], str] = lambda r: str(r.dst)
                ) -> dict:
    """The hosted API's answer for a finished job, for ``--json`` (``url``: the
    output's path) and the service (a path on the server, its name the download's).

    Inputs that were the same file as an earlier one are listed under
    ``duplicates`` with the output they share (when it was written); files of a
    folder passed over as bgrm's own outputs under ``skipped``.
    """
    made = {r.src: r.dst for r in results if r.ok and r.dst is not None}
    answer = {
        "files": [_file_entry(r, url) for r in results if r.ok and r.dst is not None],
        "failed": [{"filename": Path(r.src).name, "error": r.error} for r in results
                   if not r.ok],
        "errors": [r.error for r in results if not r.ok],
        "finished": True,
        "queue_count": 0,
    }
    passed = [r for r in results if r.skipped_output is not None]
    if passed:
        answer["skipped"] = [{"filename": Path(r.src).name, "input": r.src,
                              "reason": r.skipped_output} for r in passed]
    twice = [r for r in results if r.same_as is not None]
    if twice:
        answer["duplicates"] = [{"filename": Path(r.src).name, "input": r.src,
                                 "same_as": r.same_as,
                                 "url": str(made[r.same_as]) if r.same_as in made else None}
                                for r in twice]
    return answer


def exit_status(results: list[Result]) -> ExitStatus:
    return ExitStatus.OK if all(r.ok for r in results) else ExitStatus.FAILED
