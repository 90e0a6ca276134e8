"""Request limits, the JSON error they produce, and the checks of one uploaded image against them.

Every refusal is an :class:`ApiError` that renders as ``{"error": {"kind", "message", "limit"}}`` where
``limit`` names the limit that was crossed (``{"name": "max_file_bytes", "value": 10485760}``) or is null.
"""

from __future__ import annotations

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
    from aligngemini.decode import ImageLoadError, PixelLimitError, read_header, sniff_image_type

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
