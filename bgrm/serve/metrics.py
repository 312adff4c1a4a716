"""``GET /metrics``: the service's counters in Prometheus' text format.

A registry of the service's own (never prometheus-client's global one, which
belongs to the host process): jobs and files by outcome, seconds per file by
kind, the queue, upload bytes, models loaded, webhooks waiting. Labels are
kinds and outcomes only: never a key, a file name or a uuid.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Seconds per file: a small photo takes a fraction of a second, a long video hours.
BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, float("inf"))


class Metrics:
    """What ``/metrics`` shows; ``gauges`` name -> (help, function read at each scrape)."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]]):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter("bgrm_jobs", "Jobs finished, by kind and outcome (done: every "
                            "file written; partial; failed: none)", ["kind", "outcome"],
                            registry=r)
        self.files = Counter("bgrm_files", "Files finished, by kind and outcome",
                             ["kind", "outcome"], registry=r)
        self.seconds = Histogram("bgrm_file_seconds", "Seconds each file took to process, "
                                 "by kind", ["kind"], buckets=BUCKETS, registry=r)
        self.upload_bytes = Counter("bgrm_upload_bytes", "Bytes of files taken in (uploads "
                                    "and fetched URLs) by accepted requests", registry=r)
        self.refused = Counter("bgrm_requests_refused", "Conversion requests refused, by "
                               "HTTP status", ["status"], registry=r)
        for name, (about, read) in gauges.items():
            Gauge(name, about, registry=r).set_function(read)

    def file_done(self, kind: str, ok: bool, seconds: float | None) -> None:
        self.files.labels(kind, "done" if ok else "failed").inc()
        if seconds is not None:
            self.seconds.labels(kind).observe(seconds)

    def job_done(self, kind: str, done: int, failed: int) -> None:
        outcome = "failed" if not done else "partial" if failed else "done"
        self.jobs.labels(kind, outcome).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
