"""A chain of threads joined by small queues: decode, steps, encode all overlap.

Each queue holds at most ``depth`` items, so the frames in flight are
bounded whatever the video's length. Threads block on their queues (no
polling). When any stage fails, every stage stops working and drains its
input until the end marker, so nothing stays blocked, and the first error is
raised in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

_END = object()


def run_stages(source: Iterable, steps: list[Callable[[Any], Any]],
               sink: Callable[[Any], None], depth: int = 2) -> None:
    """Feed ``source`` through ``steps`` (one thread each) into ``sink`` (this thread)."""
    queues = [queue.Queue(maxsize=depth) for _ in range(len(steps) + 1)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def fail(exc: BaseException) -> None:
        errors.append(exc)
        stop.set()

    def produce() -> None:
        try:
            for item in source:
                if stop.is_set():
                    break
                queues[0].put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            fail(exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            queues[0].put(_END)

    def work(step: Callable, inbox: queue.Queue, outbox: queue.Queue) -> None:
        try:
            for item in iter(inbox.get, _END):
                if not stop.is_set():
                    outbox.put(step(item))
        except BaseException as exc:  # noqa: BLE001
            fail(exc)
            for _ in iter(inbox.get, _END):
                pass
        finally:
            outbox.put(_END)

    threads = [threading.Thread(target=produce, name="bgrm-decode", daemon=True)]
    threads += [threading.Thread(target=work, args=(step, queues[i], queues[i + 1]),
                                 name=f"bgrm-step{i}", daemon=True)
                for i, step in enumerate(steps)]
    for thread in threads:
        thread.start()
    try:
        for item in iter(queues[-1].get, _END):
            if not stop.is_set():
                sink(item)
    except BaseException as exc:
        fail(exc)
        for _ in iter(queues[-1].get, _END):
            pass
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
