"""Read a multipart/form-data upload into memory with a hard bound: the server never holds more
than the limit, and never writes the upload to disk (Starlette's own form parser spools parts
over 1 MB to a temporary file, which is why the app does not use it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

# Room for the parts' headers and the small text fields, on top of the file limit, so that a
# photo of exactly the limit still fits in its request.
FORM_OVERHEAD = 64 * 1024
FIELD_LIMIT = 1024  # a text field holds a number such as top_k


class UploadError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    # By field name, in the order sent; filenames dropped.
    files: dict[str, list[bytearray]] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """What one request may hold: each file's bytes, the files, and all their bytes."""
    file_bytes: int
    files: int
    total_bytes: int


def check_declared_length(headers, limits: Limits) -> None:
    """Refuse a body whose Content-Length is over the limit before reading any of it: with
    `Expect: 100-continue` the client then never sends it."""
    declared = headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise UploadError(400, f"invalid Content-Length header: {declared!r}")
    if int(declared) > limits.total_bytes + FORM_OVERHEAD:
        raise UploadError(413, _request_too_large(limits))


async def read_form(content_type: str | None, chunks: AsyncIterator[bytes],
                    limits: Limits) -> Form:
    """Parse the body as it streams in, counting every byte, whatever Content-Length said."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise UploadError(415, "send the photo as multipart/form-data, in a field named 'image'")
    collector = _Collector(limits)
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limits.total_bytes + FORM_OVERHEAD:
            raise UploadError(413, _request_too_large(limits))
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise UploadError(400, f"malformed multipart body: {exc}") from None
    if not collector.complete:
        raise UploadError(400, "malformed multipart body: it ends before its closing boundary")
    return collector.form


def _too_large(max_file_bytes: int) -> str:
    return (f"upload too large: the limit is {max_file_bytes / 1e6:g} MB "
            f"({max_file_bytes} bytes) per photo")


def _request_too_large(limits: Limits) -> str:
    return (f"upload too large: the limit is {limits.total_bytes / 1e6:g} MB "
            f"({limits.total_bytes} bytes) per request, and "
            f"{limits.file_bytes / 1e6:g} MB per photo")


class _Collector:
    """python-multipart's callbacks, gathering each part's headers and bytes in memory."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.files, self.file_bytes = 0, 0
        self.form = Form()
        self.complete = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _part_begin(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.header, self.value = b"", b""
        self.data = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def _header_end(self) -> None:
        self.headers[self.header.lower()] = self.value
        self.header, self.value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition"))
        self.name = options.get(b"name", b"").decode("utf-8", "replace")
        # A part with a filename is a file; the name itself is never used for anything.
        self.is_file = b"filename" in options
        self.limit = self.limits.file_bytes if self.is_file else FIELD_LIMIT
        if self.is_file:
            self.files += 1
            if self.files > self.limits.files:
                raise UploadError(413, f"too many files: the limit is {self.limits.files} "
                                       f"photos per request")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.data += data[start:end]
        if self.is_file:
            self.file_bytes += end - start
            if self.file_bytes > self.limits.total_bytes:
                raise UploadError(413, _request_too_large(self.limits))
        if len(self.data) > self.limit:
            if self.is_file:
                raise UploadError(413, _too_large(self.limits.file_bytes))
            raise UploadError(413, f"form field {self.name!r} is longer than {FIELD_LIMIT} bytes")

    def _part_end(self) -> None:
        if self.is_file:
            self.form.files.setdefault(self.name, []).append(self.data)
        else:
            self.form.fields.setdefault(self.name, self.data.decode("utf-8", "replace"))

    def _end(self) -> None:
        self.complete = True
