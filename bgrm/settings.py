"""The run settings as one table: where and how a run's files run, as
``options.PARAMS`` is the table of what is done to them.

The command line builds its options from ``SETTINGS`` (``bgrm serve`` those
rows marked ``serve``), and ``RunSettings`` carries their values to the one
plan of a run (``bgrm.plan``), from either door.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bgrm.options import DEVICES

ENGINES = ("auto", "onnxruntime", "openvino")  # --engine, Session's engine


@dataclass(frozen=True)
class Setting:
    """One run setting: its name (``RunSettings``' field), its flags, its kind."""

    name: str
    flags: tuple[str, ...]
    kind: str  # int | seconds | choice | text | flag
    default: Any
    help: str
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()
    serve: bool = True  # an option of ``bgrm serve`` too, for every request
    metavar: str | None = None


SETTINGS: tuple[Setting, ...] = (
    # --workers: "job" means an image or video job, and the service's requests;
    # --jobs (make's word) stays as another name for it.
    Setting("processes", ("-w", "--workers", "-j", "--jobs"), "int", None,
            "Worker processes, one file each (also -j/--jobs) [default: one process, "
            "several images at once on threads, by cores].", 1, 256, metavar="N"),
    Setting("timeout", ("--timeout",), "seconds", None,
            "A file that takes longer fails alone; its worker process is replaced.",
            metavar="SECONDS"),
    Setting("device", ("--device",), "choice", "auto", "Where the model runs.",
            choices=DEVICES),
    Setting("threads", ("--threads",), "int", None,
            "onnxruntime threads per session; video: frames in the model at once, one "
            "thread each [default: cores / files at once].", 1, 256),
    Setting("engine", ("--engine",), "choice", "auto",
            "What runs the model: auto is OpenVINO where bgrm[openvino] is installed and "
            "the model runs on the CPU, else onnxruntime.", choices=ENGINES),
    Setting("scheduler", ("--scheduler",), "text", None,
            "Run the batch on a Dask cluster (tcp://HOST:PORT).", metavar="ADDRESS"),
    Setting("skip_existing", ("--skip-existing",), "flag", False,
            "Leave inputs whose output already exists (resume a batch).", serve=False),
    Setting("traceback", ("--traceback",), "flag", False,
            "Show the full traceback of failures.", serve=False),
)


@dataclass(frozen=True)
class RunSettings:
    """Where and how a run's files run: one value per ``SETTINGS`` row."""

    processes: int | None = None
    timeout: float | None = None
    device: str = "auto"
    threads: int | None = None
    engine: str = "auto"
    scheduler: str | None = None
    skip_existing: bool = False
    traceback: bool = False

    @property
    def workers(self) -> int:
        """Processes that run files here (on a cluster: this one, the client)."""
        return 1 if self.scheduler else self.processes or 1

    @classmethod
    def take(cls, values: dict[str, Any]) -> RunSettings:
        """The settings among ``values`` (a command's parsed options), removed from it."""
        return cls(**{s.name: values.pop(s.name) for s in SETTINGS if s.name in values})
