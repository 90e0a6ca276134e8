"""Request limits, the JSON error they produce, type sniffing from magic bytes, and in-memory upload parsing.

Every refusal is an :class:`ApiError` that renders as ``{"error": {"kind", "message", "limit"}}`` where
``limit`` names the limit that was crossed (``{"name": "max_file_bytes", "value": 10485760}``) or is null.
Uploads are parsed from the request body held in memory (never spooled to disk) and bounded while they arrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_IMAGES = 16
MAX_NAME_CHARS = 255
# Form fields that carry images; any other field in a multipart body is ignored (but counts toward the bytes).
IMAGE_FIELDS = ("files", "file", "image", "images")


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class ApiError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, ``kind`` a stable machine-readable word."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        limit: tuple[str, int] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.limit = limit
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        limit = {"name": self.limit[0], "value": self.limit[1]} if self.limit else None
        return {"error": {"kind": self.kind, "message": self.message, "limit": limit}}


def check_image_bytes(data: bytes, name: str, limits: Limits) -> str:
    """Refuse a file that is too big, empty, not an image by its content, or over the decoded-pixel limit
    (read from the header, before any pixel is decoded). Returns the sniffed media type."""
    if len(data) > limits.max_file_bytes:
        raise ApiError(413, "file_too_large",
                       f"{name}: {len(data)} bytes is over the per-file limit of {limits.max_file_bytes}",
                       limit=("max_file_bytes", limits.max_file_bytes))  # fmt: skip
    if not data:
        raise ApiError(422, "empty_file", f"{name}: the file is empty (0 bytes)")
    from aligngemini.imageio import ImageLoadError, PixelLimitError, read_header, sniff_image_type

    media = sniff_image_type(data)
    if media is None:
        raise ApiError(415, "unsupported_media_type",
                       f"{name}: the content is not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF, "
                       "HEIC/AVIF); the type is read from the file's bytes, not its name or header")  # fmt: skip
    try:
        w, h, _, _ = read_header(data, name, max_pixels=limits.max_pixels)
    except PixelLimitError as exc:  # over Pillow's own bomb limit, so over ours too
        raise ApiError(422, "too_many_pixels", f"{name}: {exc.reason}",
                       limit=("max_pixels", limits.max_pixels)) from None  # fmt: skip
    except ImageLoadError:
        return media  # an unreadable header: the decoder reports the image as corrupt
    if w * h > limits.max_pixels:
        raise ApiError(422, "too_many_pixels",
                       f"{name}: {w}x{h} = {w * h} decoded pixels is over the limit of {limits.max_pixels}",
                       limit=("max_pixels", limits.max_pixels))  # fmt: skip
    return media


def clean_name(raw: str | None, fallback: str) -> str:
    """The client's file name, reduced to its last path component and bounded; never a server path."""
    if not raw:
        return fallback
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:MAX_NAME_CHARS] or fallback


# -- bodies ----------------------------------------------------------------------------------------
async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limits: Limits) -> bytes:
    """The whole body in memory, refused (413) as soon as it passes ``max_request_bytes``."""
    too_big = ApiError(413, "request_too_large",
                       f"the request body is over the limit of {limits.max_request_bytes} bytes",
                       limit=("max_request_bytes", limits.max_request_bytes))  # fmt: skip
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
        if declared > limits.max_request_bytes:
            raise too_big
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limits.max_request_bytes:
            raise too_big
    return bytes(buf)


@dataclass
class Upload:
    name: str
    data: bytes


def parse_multipart(body: bytes, content_type: str, limits: Limits, *, max_images: int) -> list[Upload]:
    """Image parts of a multipart/form-data body (fields named in IMAGE_FIELDS), bounded in count and size."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "multipart/form-data without a boundary parameter")
    uploads: list[Upload] = []
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "data": bytearray(), "keep": False}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        disp, opts = parse_options_header(state["headers"].get("content-disposition", b""))
        field = opts.get(b"name", b"").decode("utf-8", "replace")
        state["keep"] = disp == b"form-data" and field in IMAGE_FIELDS
        state["filename"] = opts.get(b"filename", b"").decode("utf-8", "replace")
        if state["keep"] and len(uploads) >= max_images:
            raise ApiError(413, "too_many_images",
                           f"more than {max_images} image(s) in one request; send them in several requests",
                           limit=("max_images", max_images))  # fmt: skip

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if not state["keep"]:
            return
        state["data"] += data[start:end]
        if len(state["data"]) > limits.max_file_bytes:
            name = clean_name(state["filename"], f"upload-{len(uploads) + 1}")
            raise ApiError(413, "file_too_large", f"{name}: over the per-file limit of {limits.max_file_bytes} bytes",
                           limit=("max_file_bytes", limits.max_file_bytes))  # fmt: skip

    def on_part_end() -> None:
        if state["keep"]:
            name = clean_name(state["filename"], f"upload-{len(uploads) + 1}")
            uploads.append(Upload(name, bytes(state["data"])))
        state.update(headers={}, data=bytearray(), keep=False, filename="")

    callbacks = {
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - the parser's errors all mean a malformed body
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
    return uploads
