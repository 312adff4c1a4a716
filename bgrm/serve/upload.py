"""A multipart request streamed straight into files of the job's folder.

Nothing of an upload is held in memory whole, and nothing lands outside the
folder given: each file part is written, as its bytes arrive, to a new file
named by its position (``0.jpg``, ``1.png``...), never by the client's name.
The client's filename is kept, made safe, only to name the result.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from bgrm.serve.units import show_size

MAX_FIELD_BYTES = 64 * 1024  # a parameter's value; the longest real one is a colour
MAX_PARTS = 1000
MAX_NAME_CHARS = 120
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a file size limit (ulimit -f)


class FormError(Exception):
    """The request cannot be taken; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    field: str  # the form field it came in (files, file[0], bg_image...)
    name: str  # the client's filename, made safe
    path: Path  # where its bytes are
    size: int = 0


# Text fields that may come several times, each value kept (remove.bg's name).
LIST_FIELDS = ("image_url",)


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[Upload] = field(default_factory=list)
    lists: dict[str, list[str]] = field(default_factory=dict)  # LIST_FIELDS' values

    @property
    def urls(self) -> list[str]:
        return [u.strip() for u in self.lists.get("image_url", []) if u.strip()]


def safe_name(raw: bytes | str) -> str:
    """A filename fit to show and to name a result: its last path part, printable
    characters only, at most ``MAX_NAME_CHARS`` (keeping the extension)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if c.isprintable() and c not in '<>:"|?*').strip(" .")
    if len(text) > MAX_NAME_CHARS:
        suffix = extension(text)
        text = text[: MAX_NAME_CHARS - len(suffix)].rstrip(" .") + suffix
    return text or "file"


def extension(name: str) -> str:
    """The name's extension, lower case, when it is a plain one ('.jpg'), else ''."""
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else ""


@dataclass(frozen=True)
class Allowance:
    """What one request may write: ``max_bytes`` of files, ``max_files`` inputs (a
    background does not count), and the disk's free space above the reserve, read
    by ``room()`` every ``ROOM_EVERY`` bytes."""

    max_bytes: int
    max_files: int
    room: Callable[[], int] = lambda: 1 << 62
    uncounted: tuple[str, ...] = ()  # file fields that are not inputs (backgrounds)


def too_many_files(max_files: int) -> FormError:
    """The 413 of a request with more input files than ``--max-files``."""
    return FormError(f"more than {max_files} files in one request (this server's "
                     "--max-files); send them in several requests", 413)


ROOM_EVERY = 8 << 20


class _Parts:
    """python-multipart's callbacks: text fields into a dict, files onto disk."""

    def __init__(self, folder: Path, allowance: Allowance):
        self.folder, self.form, self.allowance = folder, Form(), allowance
        self.written, self._checked = 0, 0
        self.parts = 0
        self._header, self._value, self._disposition = b"", b"", b""
        self._text: bytearray | None = None
        self._file = None
        self._upload: Upload | None = None

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise FormError(f"more than {MAX_PARTS} parts in one request")
        self._disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise FormError("a multipart part without a field name")
        name = options[b"name"].decode("utf-8", errors="replace")
        if b"filename" in options:
            client = safe_name(options[b"filename"])
            number = len(self.form.files)
            inputs = sum(u.field not in self.allowance.uncounted for u in self.form.files)
            if name not in self.allowance.uncounted and inputs >= self.allowance.max_files:
                raise too_many_files(self.allowance.max_files)
            self._upload = Upload(name, client, self.folder / f"{number}{extension(client)}")
            self._file = open(self._upload.path, "xb")  # noqa: SIM115 - closed at part end
            self.form.files.append(self._upload)
        else:
            self._upload, self._text, self._field = None, bytearray(), name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._count(end - start)
            self._file.write(data[start:end])
            self._upload.size += end - start
        else:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise FormError(f"{self._field}: longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._text is not None:
            value = self._text.decode("utf-8", errors="replace")
            if self._field in LIST_FIELDS:
                self.form.lists.setdefault(self._field, []).append(value)
            else:
                self.form.fields[self._field] = value
            self._text = None

    def _count(self, n: int) -> None:
        """Refuse the request as soon as its files pass a limit, before writing more."""
        allowance = self.allowance
        self.written += n
        if self.written > allowance.max_bytes:
            raise FormError(f"the files of this request are over {show_size(allowance.max_bytes)}"
                            " (this server's --max-upload)", 413)
        if self.written - self._checked >= ROOM_EVERY:
            self._checked = self.written
            if allowance.room() < 0:
                raise FormError(NO_SPACE, 507)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


NO_SPACE = ("the server's disk is nearly full: it keeps its free space for the jobs "
            "under way; try again later")


async def read_form(request, folder: Path, allowance: Allowance) -> Form:
    """The request's multipart form, its files written into ``folder`` as they come.

    Disk writes run on a worker thread, chunk by chunk, so the event loop keeps
    answering other requests during a large upload. On any failure the caller
    removes ``folder``.
    """
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in options:
        raise FormError("send the files as multipart/form-data (curl -F files=@photo.jpg)")
    parts = _Parts(folder, allowance)
    callbacks = {name: getattr(parts, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
        "on_headers_finished", "on_part_data", "on_part_end")}
    parser = MultipartParser(options[b"boundary"], callbacks)
    try:
        async for chunk in request.stream():
            if chunk:
                await anyio.to_thread.run_sync(parser.write, chunk)
        parser.finalize()
    except FormParserError:
        raise FormError("the multipart body is malformed") from None
    except OSError as exc:
        if exc.errno in NO_ROOM:
            raise FormError("the server has no room left to store this upload "
                            "(its disk is full)", 507) from None
        raise FormError("the server could not store this upload", 500) from None
    finally:
        parts.close()
    return parts.form
