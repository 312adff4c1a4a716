"""The progress bar on stderr: files for images; for videos, frames with a total
and a time left.

A video's frame count is not known until it has been decoded to the end
(container counts are never trusted), so the total is estimated from each
header, duration x rate (the --framerate when given, at most --frame-limit),
and shown with a "~" while it is an estimate. It is corrected as frames
arrive: a video that gives more frames than its estimate raises the total
at once, and a finished (or failed) video replaces its estimate by the
frames it really gave. tqdm derives the time left from the rate so far.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor


class ProgressBar:
    """One bar for a run: ``advance`` per video frame, ``finished`` per file."""

    def __init__(self, job: str, tasks: list, opts, file=None):
        from tqdm import tqdm

        self.job = job
        file = file or sys.stderr
        if job == "image":
            self._bar = tqdm(total=len(tasks), unit="file", file=file, dynamic_ncols=True,
                             leave=True)
            return
        # Headers are read side by side: a batch of many clips should not wait
        # for them one after another (each is an ffmpeg start, ~50 ms).
        from bgrm.video.reader import estimate_frames

        with ThreadPoolExecutor(4) as pool:
            guesses = list(pool.map(lambda t: estimate_frames(t.src, opts), tasks))
        self._estimate = [g or 0 for g in guesses]  # 0: no header figure, counted as it comes
        self._seen = [0] * len(tasks)
        self._open = set(range(len(tasks)))
        self._bar = tqdm(total=sum(self._estimate), unit="frame", file=file,
                         dynamic_ncols=True, leave=True, bar_format=self._format())

    def _format(self) -> str:
        approx = "~" if self._open else ""
        return ("{l_bar}{bar}| {n_fmt}/" + approx + "{total_fmt} {unit}s "
                "[{elapsed} elapsed, " + approx + "{remaining} left, {rate_fmt}]")

    def _retotal(self) -> None:
        self._bar.total = max(sum(self._estimate), self._bar.n)
        self._bar.bar_format = self._format()
        self._bar.refresh()

    def advance(self, index: int, n: int) -> None:
        """``n`` more frames of video ``index`` were written (images: nothing to do)."""
        if self.job == "image":
            return
        self._seen[index] += n
        if self._seen[index] > self._estimate[index]:
            self._estimate[index] = self._seen[index]
            self._retotal()
        self._bar.update(n)

    def finished(self, index: int, result) -> None:
        """File ``index`` is done (written, skipped or failed)."""
        if self.job == "image":
            self._bar.update(1)
            return
        self._open.discard(index)
        self._estimate[index] = self._seen[index]
        self._retotal()

    def write(self, message: str) -> None:
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()
